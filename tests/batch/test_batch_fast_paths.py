"""fit_batch's shortcuts for the common layout (equal groups stacked in order of a numeric
``by``) equal its general code: Gram matrices, the rank screen, group codes, the designs from
one formulaic call and sliced chunk arrays (the pool's draining program: test_batch.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.model.design import materialize_uncached
from drmpy.batch import batch as sb

FORMULA = ("yi ~ x + f + meta_V(V=vi)", "sigma ~ f")


def _groups(sizes, m=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes)
    M = rng.normal(size=(int(sizes.sum()), m))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    gr = sb._Groups(labels=pd.Index(range(len(sizes))), names=[], p=m, k=0, y=M[:, 0], X=M, Z=M[:, :0], v=M[:, 0],
                    row_pos=np.arange(len(M)), index=pd.RangeIndex(len(M)), offsets=offsets, sizes=sizes, notes={})
    return gr, M


@pytest.mark.parametrize("sizes", [[7] * 9, [5, 0, 9, 3, 7], [4]])
def test_cross_products_equal_per_group_products(sizes):
    gr, M = _groups(sizes)
    B = M[:, :2] ** 2
    w = np.abs(M[:, 0]) + 0.5
    gram, cross, weighted = gr.cross(M), gr.cross(M, B), gr.cross(M, B, w)
    for g in range(len(sizes)):
        sl = slice(gr.offsets[g], gr.offsets[g + 1])
        np.testing.assert_allclose(gram[g], M[sl].T @ M[sl], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(cross[g], M[sl].T @ B[sl], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(weighted[g], (M[sl] * w[sl, None]).T @ B[sl], rtol=1e-13, atol=1e-13)


def test_rank_screen_flags_what_eigenvalues_flag():
    rng = np.random.default_rng(3)
    B = rng.normal(size=(400, 6, 3)) * rng.uniform(1e-3, 1e3, (400, 1, 3))
    B[::7, :, 2] = B[::7, :, 0] * 2.0  # exactly collinear
    B[1::9, :, 1] = B[1::9, :, 0] + 1e-7 * rng.normal(size=(len(B[1::9]), 6))  # nearly collinear
    B[2::11] = 0.0  # empty design
    gram = np.einsum("gni,gnj->gij", B, B)
    ok = np.ones(len(B), dtype=bool)
    ok[5] = False  # not screened
    ev = np.linalg.eigvalsh(gram)
    expected = ok & (ev[:, 0] <= 1e-9 * np.maximum(ev[:, -1], np.finfo(float).tiny))
    flagged = sb._rank_deficient(gram, ok)
    assert expected.sum() > 40
    np.testing.assert_array_equal(flagged, expected)


@pytest.mark.parametrize("values", [np.repeat(np.arange(6), 3), np.repeat([2.5, 7.0, 9.25], 2), np.array([3, 1, 2, 2]),
                                    np.repeat(np.arange(4, dtype=np.int32), 2), np.array([-0.0, 0.0, 1.0]),
                                    np.array(["b", "a", "a"])])
def test_group_codes_equal_factorize(values):
    codes, labels = sb._by_codes(pd.DataFrame({"g": values}), "g")
    codes2, labels2 = pd.factorize(pd.Series(values), sort=True)
    np.testing.assert_array_equal(codes, codes2)
    assert labels.equals(labels2) and labels.dtype == labels2.dtype


@pytest.mark.parametrize("mu,sigma", [("yi ~ x + f + meta_V(V=vi)", "sigma ~ f"),
                                      ("yi ~ center(x) * f + meta_V(V=vi)", "sigma ~ poly(x, 2)"),
                                      ("yi ~ 0 + f + meta_V(V=vi)", "sigma ~ 1"),
                                      ("yi ~ C(f, contr.sum) + np.exp(x)", "sigma ~ f:x")])
def test_designs_from_one_formulaic_call(mu, sigma):
    rng = np.random.default_rng(1)
    d = pd.DataFrame({"x": rng.normal(size=50), "f": rng.choice(["a", "b", "c"], 50), "yi": 0.0, "vi": 0.1})
    formula = drm.Formula(mu, sigma)
    both = sb._materialize_dpars(formula, d, dict(formula.env))
    for dpar in ("mu", "sigma"):
        values, terms, _ = materialize_uncached(formula.dpars[dpar], d, dpar, formula.text[dpar], dict(formula.env))
        assert both[dpar][1] == terms
        np.testing.assert_array_equal(both[dpar][0], values)


def _stacked(G=60, n=12, seed=5):
    """G equal data sets stacked in order of an integer replicate, two of them rank-deficient."""
    rng = np.random.default_rng(seed)
    rep = np.repeat(np.arange(G), n)
    x = rng.normal(size=G * n)
    f = np.tile(np.array(["a", "b"] * (n // 2)), G)
    vi = rng.uniform(0.01, 0.1, G * n)
    yi = 0.2 + 0.5 * x + 0.3 * (f == "b") + rng.normal(size=G * n) * np.sqrt(vi + np.exp(-2.4 + 0.8 * (f == "b")))
    d = pd.DataFrame({"replicate": rep, "yi": yi, "x": x, "f": f, "vi": vi})
    d.loc[d["replicate"] == 7, "f"] = "a"  # f constant within the group
    d.loc[d["replicate"] == 11, "x"] = 1.0  # x constant: collinear with the intercept
    return d


@pytest.mark.slow
def test_sorted_equal_groups_equal_shuffled_rows():
    d = _stacked()
    fast = drm.fit_batch(drm.Formula(*FORMULA), d, by="replicate", progress=False)
    shuffled = d.sample(frac=1.0, random_state=2)  # the general paths: hashing, gathers, segment sums
    slow = drm.fit_batch(drm.Formula(*FORMULA), shuffled, by="replicate", progress=False)
    assert (fast["message"].astype(str) == slow["message"].astype(str)).all()
    bad = fast[fast["replicate"].isin([7, 11])]
    assert bad["message"].str.startswith("not fitted").all() and bad["estimate"].isna().all()
    good = ~fast["replicate"].isin([7, 11])
    np.testing.assert_allclose(fast.loc[good, "loglik"], slow.loc[good, "loglik"], rtol=1e-11)
    np.testing.assert_allclose(fast.loc[good, "estimate"], slow.loc[good, "estimate"], rtol=1e-6, atol=1e-8)
    single = drm.fit(drm.Formula(*FORMULA), data=d[d["replicate"] == 3])
    np.testing.assert_allclose(fast.loc[fast["replicate"] == 3, "loglik"].iloc[0], single.loglik, rtol=1e-10)
