"""The cdp fits the robust tests share (normal, t and mixture, ML), fitted once per test
process: session scope, as each is read-only."""
from __future__ import annotations

import pytest

import drmpy as drm

CDP_FORMULA = "yi ~ 1 + meta_V(V=vi)"


@pytest.fixture(scope="session")
def cdp():
    return drm.datasets.cdp()


@pytest.fixture(scope="session")
def cdp_normal(cdp):
    return drm.fit(CDP_FORMULA, cdp)


@pytest.fixture(scope="session")
def cdp_t(cdp):
    return drm.fit(CDP_FORMULA, cdp, family=drm.student())


@pytest.fixture(scope="session")
def cdp_mix(cdp):
    return drm.fit(CDP_FORMULA, cdp, family=drm.normal_mixture())
