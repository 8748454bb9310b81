"""Fits shared by the plot tests (module-scoped: one compile per model shape) and figure clean-up."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import drmpy as drm  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def restoration():
    return drm.datasets.restoration()


@pytest.fixture(scope="session")
def restoration_fit(restoration):
    """The restoration example: location-scale, sigma by habitat, duration in mu."""
    return drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), data=restoration)


@pytest.fixture(scope="session")
def sigma_duration_fit(restoration):
    """Location-scale with a continuous scale predictor (bubble band follows sigma(x))."""
    return drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ duration"), data=restoration)


@pytest.fixture(scope="session")
def intercept_fit(restoration):
    """Random-effects meta-analysis without moderators (funnel of the effect sizes)."""
    return drm.fit("yi ~ 1 + meta_V(V=vi)", data=restoration)


@pytest.fixture(scope="session")
def lim():
    return drm.datasets.lim2014()


@pytest.fixture(scope="session")
def three_level_fit(lim):
    """Three-level model: sampling error, effect sizes (sigma) within articles (sd(article))."""
    return drm.fit(drm.Formula("yi ~ environment + (1|article) + meta_V(V=vi)"), data=lim)


@pytest.fixture(scope="session")
def three_level_scale_fit(lim):
    """Three-level location-scale model: sigma differs by environment."""
    return drm.fit(drm.Formula("yi ~ environment + (1|article) + meta_V(V=vi)", "sigma ~ environment"),
                   data=lim)
