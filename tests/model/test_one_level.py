"""A random term whose factor has a single level is refused (issue 22, item 6).

One level is one draw of the random effect: its SD cannot be estimated (the draw is
confounded with the mu intercept, and a slope's with the mu slope), and the fit used to
report an SD with a standard error of millions.  Refused like a term whose every level is a
singleton, naming the term and the level; fit_batch's (1|g) path marks such groups as not
fitted.  (Bivariate models take no random terms.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.errors import RandomEffectsError
from drmpy.model.design import build_design


@pytest.fixture(scope="module")
def one_study() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = 10
    return pd.DataFrame({"yi": rng.normal(size=n), "vi": rng.uniform(0.05, 0.2, n), "x": rng.normal(size=n),
                         "study": "s1", "site": np.repeat(["p", "q"], 5)})


@pytest.mark.parametrize("mu, sigma", [
    ("yi ~ 1 + meta_V(V=vi) + (1|study)", "sigma ~ 1"),
    ("yi ~ 1 + meta_V(V=vi) + (1|study)", "sigma ~ 0"),  # no sigma to be confounded with: still one draw
    ("yi ~ x + meta_V(V=vi) + (1 + x|study)", "sigma ~ 1"),
    ("yi ~ x + meta_V(V=vi) + (1|site) + (1|study)", "sigma ~ 1"),
])
def test_one_level_raises_naming_term_and_level(one_study, mu, sigma):
    with pytest.raises(RandomEffectsError, match=r"`\(1( \+ x)?\|study\)`.*single level.*'s1'"):
        build_design(drm.Formula(mu, sigma), one_study)


def test_one_level_after_dropped_rows(one_study):
    """The levels that count are those of the retained rows."""
    d = one_study.copy()
    d["study"] = ["s1"] * 9 + ["s2"]
    d.loc[9, "yi"] = np.nan
    with pytest.raises(RandomEffectsError, match=r"single level.*'s1'"):
        build_design(drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)"), d)


def test_one_level_interaction_term_names_the_level(one_study):
    d = one_study.assign(site="p")
    with pytest.raises(RandomEffectsError, match=r"`\(1\|study:site\)`.*single level.*'s1:p'"):
        build_design(drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study:site)"), d)


def test_one_level_drm_fit_raises(one_study):
    with pytest.raises(RandomEffectsError, match="single level"):
        drm.fit(drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)"), one_study)


def test_two_levels_still_fit(one_study):
    d = one_study.assign(study=np.repeat(["s1", "s2"], 5))
    design = build_design(drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)"), d)
    assert design.random[0].n_levels == 2


def test_fit_batch_random_one_level_group_not_fitted(one_study):
    d = pd.concat([one_study.assign(g=1), one_study.assign(g=2, study=np.repeat(["s1", "s2"], 5))],
                  ignore_index=True)
    r = drm.fit_batch(drm.Formula("yi ~ 1 + meta_V(V=vi) + (1|study)"), d, by="g",
                      progress=False).drop_duplicates("g").set_index("g")
    m1 = str(r.loc[1, "message"])
    assert m1.startswith("not fitted:") and "single level" in m1 and "'s1'" in m1
    assert not r.loc[1, "converged"]
    assert r.loc[2, "converged"]
