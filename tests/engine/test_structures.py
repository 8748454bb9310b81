"""Every likelihood structure equals a dense multivariate-normal oracle written here with numpy.

For each design the marginal covariance ``S = V + diag(sigma_i^2) + Z G Z'`` is written
out by hand from the raw data columns and the parameter values (looked up by name), then

* ML:   -log L = -log N(y; X beta, S)       (scipy.stats.multivariate_normal)
* REML: -l_R   = 0.5[(n-p) log 2pi + log|S| + log|X'S^-1X| + r'S^-1 r],  r the GLS residual

are compared with drmpy's ``negloglik_joint`` / ``neg_reml`` evaluated on the arrays that
``drmpy.engine.program.prepare`` builds for every structure (diag / block / woodbury / dense) the
design admits.  Fits under different structures must agree, and ``ranef()`` must equal
``G Z' S^-1 (y - X beta)`` computed densely.
"""

from __future__ import annotations

import math
import warnings
import zlib

import jax
import jax.numpy as jnp
import functools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import drmpy as drm
from drmpy.model.design import build_design
from drmpy.engine.program import Control, prepare
from drmpy.engine.likelihood import RHO_GUARD, neg_reml, negloglik_joint
from drmpy.results.fit import parameter_names

N = 48
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- data


def _make_data():
    rng = np.random.default_rng(2024)
    i = np.arange(N)
    d = pd.DataFrame({
        "x": rng.normal(size=N),
        "habitat": pd.Categorical(np.where(rng.uniform(size=N) < 0.5, "grassland", "forest"),
                                  categories=["grassland", "forest"]),
        "vi": rng.uniform(0.01, 0.06, size=N),
        "a": i // 8,  # 6 districts
        "b": (i // 4) % 2,  # 2 schools per district, labels reused across districts
        "study": i // 4,  # 12 studies
        "species": [f"sp{k}" for k in i % 6],  # crossed with study
        "g": i // 6,  # 8 groups for random slopes
    })
    d["zone"] = (d["a"] % 2).astype(float)  # constant within district
    d["yi"] = 0.3 + 0.2 * d["x"] + rng.normal(0, 0.4, size=N) + rng.normal(0, 0.3, size=8)[d["g"]]
    vi = d["vi"].to_numpy()
    # dense V: compound symmetry (rho 0.4) within blocks of 4 rows (= studies)
    Vd = np.diag(vi)
    for s in range(0, N, 4):
        blk = slice(s, s + 4)
        sd = np.sqrt(vi[blk])
        Vd[blk, blk] = 0.4 * np.outer(sd, sd) + 0.6 * np.diag(vi[blk])
    # sparse V: blocks of sizes 1, 2, 3 repeating, rho 0.3
    Vs = np.diag(vi)
    s = 0
    sizes = []
    while s < N:
        for m in (1, 2, 3):
            blk = slice(s, s + m)
            sd = np.sqrt(vi[blk])
            Vs[blk, blk] = 0.3 * np.outer(sd, sd) + 0.7 * np.diag(vi[blk])
            sizes.append(m)
            s += m
    assert s == N
    # relatedness among species, rows/columns in a shuffled label order
    A = rng.normal(size=(6, 6))
    K = A @ A.T / 6 + 0.5 * np.eye(6)
    labels = ["sp3", "sp0", "sp5", "sp1", "sp4", "sp2"]
    Kdf = pd.DataFrame(K, index=labels, columns=labels)
    return d, Vd, sp.csr_matrix(Vs), Kdf


DATA, VD, VS, KSP = _make_data()
ENV = {"Vd": VD, "Vs": VS, "Ksp": KSP}


def same(col) -> np.ndarray:
    v = np.asarray(DATA[col].astype(str))
    return (v[:, None] == v[None, :]).astype(float)


def col(name) -> np.ndarray:
    return DATA[name].to_numpy(dtype=float)


FOREST = (DATA["habitat"] == "forest").to_numpy(dtype=float)
ONES = np.ones(N)


def k_rows() -> np.ndarray:
    lab = DATA["species"].to_numpy()
    return KSP.loc[lab, lab].to_numpy()


def rho(eta):
    return RHO_GUARD * np.tanh(eta)


# Each case: mu formula pieces, my own X, V (dense numpy), sigma linear predictor and the
# random-effect part of S, all from raw columns and parameter values P[name].


def s_sigma(P, extra=None):
    eta = P["sigma:(Intercept)"] * ONES
    if "sigma:x" in P:
        eta = eta + P["sigma:x"] * col("x")
    if "sigma:habitat[T.forest]" in P:
        eta = eta + P["sigma:habitat[T.forest]"] * FOREST
    return np.diag(np.exp(2 * eta))


def re_nested(P):
    sd_a = np.exp(P["sd(a):(Intercept)"] + P["sd(a):zone"] * col("zone"))
    return same("a") * np.outer(sd_a, sd_a) + same_ab() * np.exp(2 * P["sd(a:b):(Intercept)"])


def same_ab():
    ab = (DATA["a"].astype(str) + ":" + DATA["b"].astype(str)).to_numpy()
    return (ab[:, None] == ab[None, :]).astype(float)


def re_crossed(P):
    return (same("study") * np.exp(2 * P["sd(study):(Intercept)"])
            + same("species") * np.exp(2 * P["sd(species):(Intercept)"]))


def re_slope(P):
    x = col("x")
    return same("g") * np.outer(x, x) * np.exp(2 * P["sd(g|x):(Intercept)"])


def re_correlated(P, correlated=True):
    x = col("x")
    s0 = np.exp(P["sd(g):(Intercept)"])
    s1 = np.exp(P["sd(g|x):(Intercept)"])
    r = rho(P["cor(g|(Intercept),x):(Intercept)"]) if correlated else 0.0
    cov = s0**2 + r * s0 * s1 * (x[:, None] + x[None, :]) + s1**2 * np.outer(x, x)
    return same("g") * cov


def re_relmat(P):
    return np.exp(2 * P["sd(species):(Intercept)"]) * k_rows()


def re_study(P):
    return same("study") * np.exp(2 * P["sd(study):(Intercept)"])


def zero(P):
    return 0.0


X1 = np.column_stack([ONES, col("x")])
X2 = np.column_stack([ONES, col("x"), FOREST])
VDIAG = np.diag(col("vi"))

CASES = {
    # name: (formula args, X, V, random part, structures)
    "diagV": (("yi ~ x + habitat + meta_V(V=vi)", "sigma ~ x"), X2, VDIAG, zero, ("diag", "block", "dense")),
    "denseV": (("yi ~ x + meta_V(V=Vd)", "sigma ~ habitat"), X1, VD, zero, ("block", "dense")),
    "sparseV": (("yi ~ x + meta_V(V=Vs)",), X1, VS.toarray(), zero, ("block", "dense")),
    "noV_study": (("yi ~ x + (1|study)",), X1, np.zeros((N, N)), re_study, ("block", "woodbury", "dense")),
    "nested": (("yi ~ x + (1|a/b) + meta_V(V=vi)", "sigma ~ x", "sd(a) ~ zone"), X1, VDIAG, re_nested,
               ("block", "woodbury", "dense")),
    "crossed": (("yi ~ x + (1|study) + (1|species) + meta_V(V=vi)",), X1, VDIAG, re_crossed,
                ("block", "woodbury", "dense")),
    "slope": (("yi ~ x + (0 + x|g) + meta_V(V=vi)",), X1, VDIAG, re_slope, ("block", "woodbury", "dense")),
    "correlated": (("yi ~ x + (1 + x|g) + meta_V(V=vi)",), X1, VDIAG, re_correlated,
                   ("block", "woodbury", "dense")),
    "uncorrelated": (("yi ~ x + (1 + x||g) + meta_V(V=vi)",), X1, VDIAG,
                     lambda P: re_correlated(P, correlated=False), ("block", "woodbury", "dense")),
    "relmat": (("yi ~ x + relmat(1|species, K=Ksp) + meta_V(V=vi)",), X1, VDIAG, re_relmat,
               ("woodbury", "dense")),
    "nested_denseV": (("yi ~ x + (1|a/b) + meta_V(V=Vd)", "sigma ~ x", "sd(a) ~ zone"), X1, VD, re_nested,
                      ("block", "dense")),
    "correlated_denseV": (("yi ~ x + (1 + x|g) + meta_V(V=Vd)",), X1, VD, re_correlated, ("block", "dense")),
    "crossed_sparseV": (("yi ~ x + (1|study) + (1|species) + meta_V(V=Vs)",), X1, VS.toarray(), re_crossed,
                        ("block", "dense")),
    "relmat_denseV": (("yi ~ x + relmat(1|species, K=Ksp) + meta_V(V=Vd)",), X1, VD, re_relmat, ("dense",)),
}


def design_of(name):
    args = CASES[name][0]
    return build_design(drm.Formula(*args), DATA, env=ENV)


def draw_params(names, rng) -> dict:
    """Parameter values by name: location N(0, 0.5), log-SDs around -1, slopes of log-SDs, cor etas."""
    P = {}
    for nm in names:
        if nm.startswith("mu:"):
            P[nm] = rng.normal(0, 0.5)
        elif nm.startswith("cor("):
            P[nm] = rng.uniform(-1.2, 1.2)
        elif nm.endswith(":(Intercept)"):
            P[nm] = rng.uniform(-2.0, -0.3)
        else:
            P[nm] = rng.uniform(-0.6, 0.6)
    return P


def oracle(name, P):
    """(ML negloglik at beta, REML objective, S) computed densely."""
    _, X, V, re_part, _ = CASES[name]
    S = V + s_sigma(P) + re_part(P)
    y = DATA["yi"].to_numpy()
    beta = np.array([P[k] for k in P if k.startswith("mu:")])
    ml = -stats.multivariate_normal.logpdf(y, X @ beta, S)
    Si = np.linalg.inv(S)
    A = X.T @ Si @ X
    bhat = np.linalg.solve(A, X.T @ Si @ y)
    r = y - X @ bhat
    p = X.shape[1]
    reml = 0.5 * ((N - p) * LOG_2PI + np.linalg.slogdet(S)[1] + np.linalg.slogdet(A)[1] + r @ Si @ r)
    return ml, reml, S


def drm_objectives(design, structure):
    """A function (beta, phi) -> (ML, REML) through prepare(); beta in original coordinates."""
    (arrs, struct, beta0, _), _ = prepare(design, "ML", Control(structure=structure))
    assert struct.kind == structure
    fn = jax.jit(lambda b, p, a: (negloglik_joint(b, p, a, struct), neg_reml(p, a, struct)))

    def evaluate(beta, phi):
        ml, reml = fn(jnp.asarray(beta - beta0), jnp.asarray(phi), arrs)
        return float(ml), float(reml)

    return evaluate


# --------------------------------------------------------------------------- likelihood = oracle


@pytest.mark.parametrize("name", list(CASES))
def test_structures_equal_dense_oracle(name):
    design = design_of(name)
    names = parameter_names(design)
    _, X, _, _, structures = CASES[name]
    np.testing.assert_allclose(design.fixed["mu"].matrix, X, atol=1e-14)
    p = X.shape[1]
    evaluators = {s: drm_objectives(design, s) for s in structures}
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for _ in range(3):
        P = draw_params(names, rng)
        theta = np.array([P[k] for k in names])
        ml, reml, _ = oracle(name, P)
        for s, ev in evaluators.items():
            got_ml, got_reml = ev(theta[:p], theta[p:])
            assert got_ml == pytest.approx(ml, abs=1e-8, rel=1e-12), (name, s, "ML")
            assert got_reml == pytest.approx(reml, abs=1e-8, rel=1e-12), (name, s, "REML")


@functools.lru_cache(maxsize=None)
def cached_evaluator(name, structure):
    design = design_of(name)
    return parameter_names(design), design.fixed["mu"].matrix.shape[1], drm_objectives(design, structure)


@settings(max_examples=10, deadline=None)
@given(
    log_sd0=st.floats(-6.0, 1.0), log_sd1=st.floats(-6.0, 1.0), eta=st.floats(-4.0, 4.0),
    log_sigma=st.floats(-6.0, 0.5), beta=st.tuples(st.floats(-2, 2), st.floats(-2, 2)),
)
def test_correlated_slopes_oracle_over_parameter_space(log_sd0, log_sd1, eta, log_sigma, beta):
    """Tiny and large SDs, correlations up to the guard (|rho| -> 0.999...): every structure = oracle."""
    P = {"mu:(Intercept)": beta[0], "mu:x": beta[1], "sigma:(Intercept)": log_sigma,
         "sd(g):(Intercept)": log_sd0, "sd(g|x):(Intercept)": log_sd1,
         "cor(g|(Intercept),x):(Intercept)": eta}
    ml, reml, _ = oracle("correlated", P)
    for structure in ("block", "woodbury", "dense"):
        names, p, ev = cached_evaluator("correlated", structure)
        theta = np.array([P[k] for k in names])
        got_ml, got_reml = ev(theta[:p], theta[p:])
        assert got_ml == pytest.approx(ml, abs=1e-7, rel=1e-10), structure
        assert got_reml == pytest.approx(reml, abs=1e-7, rel=1e-10), structure


def test_default_structure_choice():
    expected = {"diagV": "diag", "denseV": "block", "sparseV": "block", "nested": "block",
                "crossed": "block", "relmat": "woodbury", "relmat_denseV": "dense"}
    for name, kind in expected.items():
        (_, struct, _, _), _ = prepare(design_of(name), "ML", Control())
        assert struct.kind == kind, name


def test_unavailable_structures_refused():
    with pytest.raises(drm.DrmError, match="structure='diag' needs a diagonal V"):
        prepare(design_of("denseV"), "ML", Control(structure="diag"))
    with pytest.raises(drm.DrmError, match="structure='woodbury' needs random effects"):
        prepare(design_of("diagV"), "ML", Control(structure="woodbury"))
    with pytest.raises(drm.DrmError, match="structure='block' is not available with relmat"):
        prepare(design_of("relmat"), "ML", Control(structure="block"))
    with pytest.raises(drm.DrmError, match="structure must be one of"):
        drm.fit(drm.Formula("yi ~ x + meta_V(V=vi)"), DATA, control={"structure": "sparse"})


def test_weighted_likelihood_same_under_every_structure():
    """Row weights multiply each row's log-likelihood; a structure that cannot apply them must refuse."""
    w = np.linspace(0.5, 2.0, N)
    design = build_design(drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ x"), DATA, weights=w)
    y = DATA["yi"].to_numpy()
    beta = np.array([0.2, -0.1])
    gamma = np.array([-1.1, 0.3])
    s = np.sqrt(col("vi") + np.exp(2 * (gamma[0] + gamma[1] * col("x"))))
    expected = -np.sum(w * stats.norm.logpdf(y, X1 @ beta, s))
    for structure in ("diag", "block", "dense"):
        try:
            ev = drm_objectives(design, structure)
        except drm.DrmError:
            continue  # refusing is acceptable; silently ignoring the weights is not
        got, _ = ev(beta, gamma)
        assert got == pytest.approx(expected, abs=1e-8), structure


# --------------------------------------------------------------------------- fits agree across structures


def fit_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", drm.ConvergenceWarning)
        return drm.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def nested_fits():
    f = drm.Formula(*CASES["nested"][0])
    return {s: fit_quiet(f, DATA, env=ENV, control={"structure": s}) for s in ("block", "woodbury", "dense")}


def test_fits_agree_across_structures_nested_ml(nested_fits):
    ref = nested_fits["dense"]
    assert ref.structure == "dense"
    for s, fit in nested_fits.items():
        assert fit.structure == s
        assert fit.loglik == pytest.approx(ref.loglik, abs=1e-6)
        np.testing.assert_allclose(fit.params.to_numpy(), ref.params.to_numpy(), atol=1e-6)
        np.testing.assert_allclose(fit.std_errors.to_numpy(), ref.std_errors.to_numpy(), rtol=1e-4)
    # the fitted logLik is the oracle's at the estimates
    P = dict(ref.params)
    ml, _, _ = oracle("nested", P)
    assert ref.loglik == pytest.approx(-ml, abs=1e-8)


def test_fits_agree_across_structures_dense_v_reml():
    f = drm.Formula(*CASES["nested_denseV"][0])
    fits = {s: fit_quiet(f, DATA, env=ENV, method="REML", control={"structure": s}) for s in ("block", "dense")}
    a, b = fits["block"], fits["dense"]
    assert a.loglik == pytest.approx(b.loglik, abs=1e-6)
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), atol=1e-6)
    _, reml, _ = oracle("nested_denseV", dict(b.params))
    assert b.loglik == pytest.approx(-reml, abs=1e-8)


# --------------------------------------------------------------------------- conditional modes


def dense_modes(name, fit, terms):
    """{(group, level, coef): b_hat} from G Z' S^-1 (y - X beta), with Z and G written out densely.

    ``terms``: list of (group, level labels per row, [(coef, z column, sd per row)], cor)
    for block-diagonal G; relmat handled separately.
    """
    P = dict(fit.params)
    _, X, _, _, _ = CASES[name]
    _, _, S = oracle(name, P)
    beta = np.array([P[k] for k in P if k.startswith("mu:")])
    u = np.linalg.solve(S, DATA["yi"].to_numpy() - X @ beta)
    # build Z (n x Q) and G (Q x Q)
    cols, G_blocks, keys = [], [], []
    for group, labels, coefs, r in terms:
        for lev in dict.fromkeys(labels):
            rows = labels == lev
            q = len(coefs)
            sds = np.array([c[2][rows][0] for c in coefs])
            C = np.eye(q)
            if q == 2 and r is not None:
                C[0, 1] = C[1, 0] = r
            G_blocks.append(sds[:, None] * C * sds[None, :])
            for coef, z, _ in coefs:
                cols.append(np.where(rows, z, 0.0))
                keys.append((group, str(lev), coef))
    Z = np.column_stack(cols)
    from scipy.linalg import block_diag

    G = block_diag(*G_blocks)
    b = G @ Z.T @ u
    return dict(zip(keys, b))


def ranef_dict(fit):
    tab = fit.ranef()
    assert list(tab.columns) == ["group", "level", "term", "estimate", "cond_sd", "n_rows"]
    return {(g, str(l), t): e for g, l, t, e in zip(tab["group"], tab["level"], tab["term"], tab["estimate"])}


def test_ranef_nested_equals_dense(nested_fits):
    fit = nested_fits["block"]
    P = dict(fit.params)
    sd_a = np.exp(P["sd(a):(Intercept)"] + P["sd(a):zone"] * col("zone"))
    sd_ab = np.exp(P["sd(a:b):(Intercept)"]) * ONES
    ab = (DATA["a"].astype(str) + ":" + DATA["b"].astype(str)).to_numpy()
    expected = dense_modes("nested", fit, [
        ("a", DATA["a"].astype(str).to_numpy(), [("(Intercept)", ONES, sd_a)], None),
        ("a:b", ab, [("(Intercept)", ONES, sd_ab)], None),
    ])
    got = ranef_dict(fit)
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-8), k
    # modes do not depend on the likelihood structure
    for s in ("woodbury", "dense"):
        other = ranef_dict(nested_fits[s])
        for k, v in got.items():
            assert other[k] == pytest.approx(v, abs=1e-5), (s, k)


def test_ranef_correlated_slopes_dense_v_equals_dense():
    fit = fit_quiet(drm.Formula(*CASES["correlated_denseV"][0]), DATA, env=ENV)
    P = dict(fit.params)
    s0 = np.exp(P["sd(g):(Intercept)"]) * ONES
    s1 = np.exp(P["sd(g|x):(Intercept)"]) * ONES
    r = rho(P["cor(g|(Intercept),x):(Intercept)"])
    expected = dense_modes("correlated_denseV", fit, [
        ("g", DATA["g"].astype(str).to_numpy(), [("(Intercept)", ONES, s0), ("x", col("x"), s1)], r),
    ])
    got = ranef_dict(fit)
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-8), k
    # fitted() adds Z b_hat to X beta
    beta = np.array([P["mu:(Intercept)"], P["mu:x"]])
    zb = np.array([got[("g", str(gv), "(Intercept)")] + got[("g", str(gv), "x")] * xv
                   for gv, xv in zip(DATA["g"], DATA["x"])])
    np.testing.assert_allclose(fit.fitted().to_numpy(), X1 @ beta + zb, atol=1e-8)


def test_ranef_relmat_equals_dense():
    fit = fit_quiet(drm.Formula(*CASES["relmat"][0]), DATA, env=ENV)
    P = dict(fit.params)
    _, _, S = oracle("relmat", P)
    beta = np.array([P["mu:(Intercept)"], P["mu:x"]])
    u = np.linalg.solve(S, DATA["yi"].to_numpy() - X1 @ beta)
    labels = list(KSP.index)
    Z = (DATA["species"].to_numpy()[:, None] == np.array(labels)[None, :]).astype(float)
    b = np.exp(2 * P["sd(species):(Intercept)"]) * KSP.to_numpy() @ Z.T @ u
    got = ranef_dict(fit)
    assert {k[1] for k in got} == set(labels)
    for lab, val in zip(labels, b):
        assert got[("species", lab, "(Intercept)")] == pytest.approx(val, abs=1e-8), lab
