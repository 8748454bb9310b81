"""fit_batch against one-by-one drm.fit, bad groups, chunking, dask; simulate and parametric_bootstrap.

The reference for every group is drmpy's single ``fit`` on that group's rows (itself tested
against drmTMB and metafor); batch results must match it to 1e-8 in logLik.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine.optimize import CONVERGED_FLAT

FORMULA = ("yi ~ x + f + meta_V(V=vi)", "sigma ~ f")
COLUMNS = ["set", "parameter", "estimate", "std_error", "loglik", "converged", "max_gradient", "message"]


def _make_batch(G: int = 200, seed: int = 0) -> pd.DataFrame:
    """G data sets of 10 to 30 rows from a location-scale model; special groups appended."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 31, G)
    n = int(sizes.sum())
    group = np.repeat(np.arange(G), sizes)
    pos = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    x = rng.normal(size=n)
    f = np.where(pos % 2 == 0, "a", "b")
    f = np.where(pos >= 2, rng.choice(["a", "b"], n), f)
    vi = rng.uniform(0.01, 0.1, n)
    sigma = np.exp(-1.2 + 0.4 * (f == "b"))
    mu = 0.2 + 0.5 * x + 0.3 * (f == "b")
    yi = mu + rng.normal(size=n) * np.sqrt(vi + sigma**2)
    d = pd.DataFrame({"set": [f"s{g:03d}" for g in group], "yi": yi, "x": x, "f": f, "vi": vi})
    specials = []
    # sigma at its zero boundary: far less spread than the sampling variances allow
    m = 24
    xb = rng.normal(size=m)
    fb = np.tile(["a", "b"], m // 2)
    vb = rng.uniform(0.02, 0.05, m)
    specials.append(pd.DataFrame({"set": "z_boundary", "yi": 0.1 + 0.5 * xb + 0.1 * np.sqrt(vb) * rng.normal(size=m),
                                  "x": xb, "f": fb, "vi": vb}))
    bad = d[d["set"] == "s000"].copy()
    bad["set"] = "z_badV"
    bad.iloc[3, bad.columns.get_loc("vi")] = -0.02
    specials.append(bad)
    few = d[d["set"] == "s001"].head(3).copy()
    few["set"] = "z_few"
    specials.append(few)
    onelevel = d[d["set"] == "s002"].copy()
    onelevel["set"] = "z_onelevel"
    onelevel["f"] = "a"
    specials.append(onelevel)
    miss = d[d["set"] == "s003"].copy()
    miss["set"] = "z_missing"
    miss.iloc[[1, 4], miss.columns.get_loc("yi")] = np.nan
    specials.append(miss)
    return pd.concat([d] + specials, ignore_index=True)


@pytest.fixture(scope="module")
def batch_data() -> pd.DataFrame:
    return _make_batch()


@pytest.fixture(scope="module")
def batch_ml(batch_data) -> pd.DataFrame:
    return drm.fit_batch(drm.Formula(*FORMULA), batch_data, by="set", progress=False)


def _single(d: pd.DataFrame, method: str = "ML"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return drm.fit(drm.Formula(*FORMULA), d.drop(columns="set"), method=method)


def _at_boundary(fit) -> bool:
    return fit._raw.status == CONVERGED_FLAT or float(fit.sigma().min()) < 1e-3


def test_columns_rows_and_names(batch_data, batch_ml):
    assert list(batch_ml.columns) == COLUMNS
    groups = sorted(batch_data["set"].unique())
    names = list(_single(batch_data[batch_data["set"] == "s000"]).params.index)
    assert len(batch_ml) == len(groups) * len(names)
    assert list(batch_ml["set"].iloc[:: len(names)]) == groups
    assert list(batch_ml["parameter"].astype(str).iloc[: len(names)]) == names
    assert batch_ml["converged"].dtype == bool


def test_every_group_matches_single_fit(batch_data, batch_ml):
    worst_ll = 0.0
    checked = 0
    for name, d in batch_data.groupby("set", sort=True):
        if name in ("z_badV", "z_few", "z_onelevel"):
            continue
        fit = _single(d)
        rows = batch_ml[batch_ml["set"] == name]
        assert rows["converged"].all() == fit.converged, name
        assert abs(rows["loglik"].iloc[0] - fit.loglik) <= 1e-8, (name, rows["loglik"].iloc[0], fit.loglik)
        worst_ll = max(worst_ll, abs(rows["loglik"].iloc[0] - fit.loglik))
        est = rows["estimate"].to_numpy()
        se = rows["std_error"].to_numpy()
        if _at_boundary(fit):
            # at the boundary only the location and the likelihood are well determined
            np.testing.assert_allclose(est[:3], fit.params.to_numpy()[:3], atol=1e-6)
            continue
        np.testing.assert_allclose(est, fit.params.to_numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(se, fit.std_errors.to_numpy(), rtol=1e-5, err_msg=name)
        assert rows["max_gradient"].iloc[0] < 1e-3  # check()'s gradient threshold
        checked += 1
    assert checked >= 120  # the others have a sigma at its zero boundary (compared above on mu)


def test_boundary_group_converges(batch_data, batch_ml):
    d = batch_data[batch_data["set"] == "z_boundary"]
    fit = _single(d)
    assert fit.converged and float(fit.sigma().max()) < 1e-4  # the case the test is meant to cover
    rows = batch_ml[batch_ml["set"] == "z_boundary"]
    assert rows["converged"].all()
    assert rows["message"].iloc[0].startswith("converged")
    assert abs(rows["loglik"].iloc[0] - fit.loglik) <= 1e-8
    assert np.exp(rows["estimate"].iloc[3]) < 1e-4


def test_bad_groups_are_isolated(batch_data, batch_ml):
    def group(name):
        return batch_ml[batch_ml["set"] == name]

    bad = group("z_badV")
    assert bad["estimate"].isna().all() and bad["std_error"].isna().all() and bad["loglik"].isna().all()
    assert not bad["converged"].any()
    msg = bad["message"].iloc[0]
    assert msg.startswith("not fitted: meta_V(V = vi): sampling variances must be >= 0") and "-0.02" in msg
    few = group("z_few")
    assert few["estimate"].isna().all()
    assert few["message"].iloc[0] == "not fitted: 3 rows for 5 parameters (3 mu, 2 sigma)"
    one = group("z_onelevel")
    assert one["estimate"].isna().all()
    assert "rank-deficient" in one["message"].iloc[0] and "f[T.b]" in one["message"].iloc[0]
    # the same batch without the bad groups gives the same numbers for everyone else
    good = batch_data[~batch_data["set"].isin(["z_badV", "z_few", "z_onelevel"])]
    clean = drm.fit_batch(drm.Formula(*FORMULA), good, by="set", progress=False)
    kept = batch_ml[batch_ml["set"].isin(good["set"].unique())].reset_index(drop=True)
    # (chunks are laid out differently; log-SDs at a zero boundary are only determined to ~1e-9)
    np.testing.assert_allclose(kept["estimate"], clean["estimate"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(kept["loglik"], clean["loglik"], rtol=1e-12)


def test_missing_rows_counted_and_group_fitted(batch_data, batch_ml):
    rows = batch_ml[batch_ml["set"] == "z_missing"]
    assert rows["converged"].all()
    assert rows["message"].iloc[0] == ("converged: gradient below tolerance; "
                                       "2 rows dropped (missing values in model variables)")
    fit = _single(batch_data[batch_data["set"] == "z_missing"])
    assert fit.nobs == len(batch_data[batch_data["set"] == "z_missing"]) - 2
    assert abs(rows["loglik"].iloc[0] - fit.loglik) <= 1e-8


def test_reml_matches_single_fits(batch_data):
    # groups of at most 16 rows share one compiled single-fit program (padded to 16 rows)
    sizes = batch_data.groupby("set").size()
    names = sorted(sizes.index[(sizes <= 16) & sizes.index.str.startswith("s")])[:30]
    d = batch_data[batch_data["set"].isin(names)]
    out = drm.fit_batch(drm.Formula(*FORMULA), d, by="set", method="REML", progress=False)
    for name in names:
        fit = _single(d[d["set"] == name], "REML")
        rows = out[out["set"] == name]
        assert abs(rows["loglik"].iloc[0] - fit.loglik) <= 1e-8
        if not _at_boundary(fit):
            np.testing.assert_allclose(rows["estimate"], fit.params.to_numpy(), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(rows["std_error"], fit.std_errors.to_numpy(), rtol=1e-5)


def test_chunking_does_not_change_results(batch_data, batch_ml):
    small = drm.fit_batch(drm.Formula(*FORMULA), batch_data, by="set", progress=True, chunk_size=7)
    np.testing.assert_allclose(small["loglik"], batch_ml["loglik"], rtol=1e-12)
    np.testing.assert_allclose(small["estimate"], batch_ml["estimate"], rtol=1e-8, atol=1e-12)
    assert (small["message"] == batch_ml["message"]).all()


def _pool_problems(M: int, N: int = 12):
    """M random-effects meta-analyses of N rows as pool arrays (a third at the zero boundary,
    every fifth padded after 9 rows) and NaN start values."""
    from drmpy.engine.batch import DiagArrays

    rng = np.random.default_rng(4)
    v = rng.uniform(0.01, 0.1, (M, N))
    tau = np.where(np.arange(M) % 3 == 0, 0.0, 0.3)  # a third at the zero boundary (slow)
    y = 0.2 + rng.normal(size=(M, N)) * np.sqrt(v + tau[:, None] ** 2)
    w = np.ones((M, N))
    w[::5, 9:] = 0.0  # some groups padded
    X = np.ones((M, N, 1)) * w[..., None]
    a = DiagArrays(y * w, X, np.ones((M, N, 1)), np.where(w > 0, v, 1.0), w)
    return a, np.full((M, 1), np.nan)


def test_lane_refill_runs_each_group_as_its_own_optimiser():
    """Pool program (lanes refilled as groups finish) == one while loop per group."""
    from drmpy.engine.batch import pool_program, diag_program

    M = 40
    a, nan = _pool_problems(M)
    pooled = pool_program(True, 4)(a, nan, nan, M, 200, 1e-8)
    fewer = pool_program(True, 4)(a, nan, nan, M - 7, 200, 1e-8)  # the last 7 are padding
    np.testing.assert_array_equal(np.asarray(fewer["iterations"])[: M - 7], np.asarray(pooled["iterations"])[: M - 7])
    assert (np.asarray(fewer["iterations"])[M - 7:] == 0).all()
    single = diag_program(True)(a, nan, nan, 200, 1e-8)
    assert np.ptp(np.asarray(single["iterations"])) > 5  # slow and fast groups mixed
    for key in ("iterations", "status"):
        np.testing.assert_array_equal(np.asarray(pooled[key]), np.asarray(single[key]))
    for key in ("beta", "phi", "f", "var"):
        np.testing.assert_allclose(np.asarray(pooled[key]), np.asarray(single[key]), rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_draining_program_keeps_each_groups_iterations(monkeypatch):
    """With the narrower draining program switched on for 8 lanes (2 after draining), every
    group still runs exactly its own optimiser (its iterations and estimates)."""
    from drmpy.engine import batch as eb

    M = 48
    a, nan = _pool_problems(M)
    monkeypatch.setattr(eb, "MIN_DRAIN_LANES", 2)
    pooled = eb.pool_program.__wrapped__(False, 8)(a, nan, nan, M - 3, 200, 1e-8)  # the last 3 are padding
    single = eb.diag_program(False)(a, nan, nan, 200, 1e-8)
    assert np.ptp(np.asarray(single["iterations"])) > 5
    for key in ("iterations", "status"):
        np.testing.assert_array_equal(np.asarray(pooled[key])[: M - 3], np.asarray(single[key])[: M - 3])
    for key in ("beta", "phi", "f"):
        np.testing.assert_allclose(np.asarray(pooled[key])[: M - 3], np.asarray(single[key])[: M - 3],
                                   rtol=1e-10, atol=1e-12)
    assert (np.asarray(pooled["iterations"])[M - 3:] == 0).all()


def test_iteration_limit_reported(batch_data):
    d = batch_data[batch_data["set"].isin(["s010", "s011"])]
    out = drm.fit_batch(drm.Formula(*FORMULA), d, by="set", progress=False, control={"max_iter": 1})
    assert not out["converged"].any()
    assert out["message"].str.startswith("not converged: iteration limit reached").all()
    assert out["estimate"].notna().all()


def test_by_values_types_and_polars(batch_data):
    d = batch_data[batch_data["set"].isin(["s020", "s021", "s022"])].copy()
    d["rep"] = d["set"].map({"s020": 7, "s021": 3, "s022": 5})
    out = drm.fit_batch(drm.Formula(*FORMULA), d.drop(columns="set"), by="rep", progress=False)
    assert list(out["rep"].unique()) == [3, 5, 7] and out["rep"].dtype == d["rep"].dtype
    pl = pytest.importorskip("polars")
    plain = {c: d[c].to_numpy(dtype=object if c == "f" else None) for c in ("yi", "x", "f", "vi", "rep")}
    out_pl = drm.fit_batch(drm.Formula(*FORMULA), pl.DataFrame(plain), by="rep", progress=False)
    np.testing.assert_allclose(out_pl["estimate"], out["estimate"], rtol=1e-12)


def test_input_not_modified_and_errors(batch_data):
    d = batch_data[batch_data["set"].isin(["s030", "s031"])].copy()
    before = d.copy()
    drm.fit_batch(drm.Formula(*FORMULA), d, by="set", progress=False)
    pd.testing.assert_frame_equal(d, before)
    with pytest.raises(drm.DataError, match="by: column `nope` is not in the data"):
        drm.fit_batch(drm.Formula(*FORMULA), d, by="nope")
    d2 = d.copy()
    d2.iloc[2, d2.columns.get_loc("set")] = None
    with pytest.raises(drm.DataError, match=r"by: column `set` has 1 missing value\(s\)"):
        drm.fit_batch(drm.Formula(*FORMULA), d2, by="set")
    with pytest.raises(drm.FormulaError, match=r"random slope"):  # (1|f) alone: tests/batch/test_batch_random.py
        drm.fit_batch(drm.Formula("yi ~ x + (1 + x|f) + meta_V(V=vi)"), d, by="set")
    V = np.eye(len(d)) * 0.05  # noqa: F841  (meta_V(V=V) finds it in this namespace)
    with pytest.raises(drm.FormulaError, match=r"full covariance matrix is not supported"):
        drm.fit_batch(drm.Formula("yi ~ x + meta_V(V=V)"), d, by="set")
    with pytest.raises(drm.DrmError, match="chunk_size must be a positive integer"):
        drm.fit_batch(drm.Formula(*FORMULA), d, by="set", chunk_size=0)
    with pytest.raises(drm.DrmError, match="method must be"):
        drm.fit_batch(drm.Formula(*FORMULA), d, by="set", method="OLS")
    with pytest.raises(drm.DataError, match="Column `w` used in the mu formula"):
        drm.fit_batch(drm.Formula("yi ~ w + meta_V(V=vi)"), d, by="set")
    with pytest.raises(drm.FormulaError, match="bivariate model .* is not supported in batches"):
        drm.fit_batch(drm.Formula(mu1="yi ~ 1", mu2="x ~ 1"), d, by="set")
    with pytest.raises(drm.FormulaError, match="has no coefficients"):
        drm.fit_batch(drm.Formula("yi ~ x + meta_V(V=vi)", "sigma ~ 0"), d, by="set")


def test_dask_cluster_equals_local(batch_data):
    distributed = pytest.importorskip("distributed")
    names = sorted(batch_data["set"].unique())[:60] + ["z_badV", "z_missing"]
    d = batch_data[batch_data["set"].isin(names)]
    local = drm.fit_batch(drm.Formula(*FORMULA), d, by="set", progress=False, chunk_size=16)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        remote = drm.fit_batch(drm.Formula(*FORMULA), d, by="set", progress=False, chunk_size=16,
                               client=client)
        # the chunks really ran in the worker processes
        imported = client.run(lambda: "drmpy.engine.batch" in __import__("sys").modules)
        assert any(imported.values())
    pd.testing.assert_frame_equal(remote.drop(columns=["estimate", "std_error", "loglik", "max_gradient"]),
                                  local.drop(columns=["estimate", "std_error", "loglik", "max_gradient"]))
    for col in ("estimate", "std_error", "loglik", "max_gradient"):
        np.testing.assert_allclose(remote[col], local[col], rtol=1e-12, atol=1e-300, equal_nan=True)


TWO_DEVICES = """
import sys
import pandas as pd
import jax
import jax.monitoring
import drmpy as drm
assert len(jax.local_devices()) == 2, jax.local_devices()
compiled = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiled.append(kw.get("fun_name"))
    if event.endswith("backend_compile_duration") else None)
d, genes = pd.read_pickle(sys.argv[1])
pool = drm.fit_batch(drm.Formula("yi ~ x + f + meta_V(V=vi)", "sigma ~ f"), d, by="set", progress=False,
                     chunk_size=16)
pool_programs = sum(name == "jit(per_device)" for name in compiled)
tau2 = drm.fit_batch(drm.Formula("yi ~ x + meta_V(V=vi)"), d, by="set", method="REML", progress=False,
                     chunk_size=16)
random = drm.fit_batch(drm.Formula("yi ~ 1 + (1|study) + meta_V(V=vi)"), genes, by="gene", method="REML",
                       progress=False, chunk_size=8)
pd.to_pickle((pool, tau2, random, pool_programs), sys.argv[2])
"""


def _genes(G: int = 20, seed: int = 4) -> pd.DataFrame:
    """G three-level data sets: 6 studies x 3 effect sizes."""
    rng = np.random.default_rng(seed)
    n = G * 18
    study = np.tile(np.repeat(np.arange(6), 3), G)
    vi = rng.uniform(0.01, 0.1, n)
    yi = 0.3 + np.repeat(rng.normal(size=G * 6) * 0.25, 3) + rng.normal(size=n) * np.sqrt(vi + 0.02)
    return pd.DataFrame({"gene": np.repeat(np.arange(G), 18), "study": study, "yi": yi, "vi": vi})


@pytest.mark.slow
def test_two_cpu_devices_equal_one(batch_data, tmp_path):
    """The suite runs with one JAX CPU device per process (tests/conftest.py); a user's
    process has one per core, and the batch runners hand each device one chunk of a round
    (one program for all devices, compiled once).  The same batches (trust-region pools, the
    tau^2 program, (1|study) pools; rounds of two, and short rounds) in a process with two
    devices give the same results: the one logLik, and estimates and SEs to 1e-6 relative
    (the multi-device program is compiled differently, and rounding moves the estimates of
    a sigma running to zero, SEs near 1e4, by about 1e-7)."""
    import os
    import subprocess
    import sys

    import jax

    assert len(jax.local_devices()) == 1
    names = sorted(batch_data["set"].unique())[:60] + ["z_badV", "z_missing"]
    d = batch_data[batch_data["set"].isin(names)]
    genes = _genes()
    local = (drm.fit_batch(drm.Formula(*FORMULA), d, by="set", progress=False, chunk_size=16),
             drm.fit_batch(drm.Formula("yi ~ x + meta_V(V=vi)"), d, by="set", method="REML", progress=False,
                           chunk_size=16),
             drm.fit_batch(drm.Formula("yi ~ 1 + (1|study) + meta_V(V=vi)"), genes, by="gene", method="REML",
                           progress=False, chunk_size=8))
    pd.to_pickle((d, genes), tmp_path / "d.pkl")
    # no persistent cache in the child: every program it runs is compiled there, and counted
    env = dict(os.environ, DRMPY_CPU_DEVICES="2", DRMPY_NO_JAX_CACHE="1")
    run = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(tmp_path / "d.pkl"), str(tmp_path / "out.pkl")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    *two, pool_programs = pd.read_pickle(tmp_path / "out.pkl")
    # the pool's chunks (16, 16, 16 and 14 groups of one shape) ran as one program on both
    # devices: compiled once, not once per device
    assert pool_programs == 1
    numeric = ["estimate", "std_error", "loglik", "max_gradient"]
    for a, b in zip(two, local):
        pd.testing.assert_frame_equal(a.drop(columns=numeric), b.drop(columns=numeric))
        np.testing.assert_allclose(a["loglik"], b["loglik"], rtol=1e-12, atol=1e-10, equal_nan=True)
        for col in ("estimate", "std_error"):
            np.testing.assert_allclose(a[col], b[col], rtol=1e-6, atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------- simulate


def _clustered_data(n_studies: int = 8, per: int = 5, seed: int = 5):
    """Studies of ``per`` rows with a within-study sampling correlation of 0.4 (block V)."""
    rng = np.random.default_rng(seed)
    n = n_studies * per
    study = np.repeat(np.arange(n_studies), per)
    vi = rng.uniform(0.01, 0.04, n)
    same = study[:, None] == study[None, :]
    V = np.where(same, 0.4 * np.sqrt(vi[:, None] * vi[None, :]), 0.0)
    np.fill_diagonal(V, vi)
    x = rng.normal(size=n)
    b0 = rng.normal(size=n_studies) * 0.3
    b1 = rng.normal(size=n_studies) * 0.2
    y = 0.1 + 0.4 * x + b0[study] + b1[study] * x + np.linalg.cholesky(V) @ rng.normal(size=n) \
        + 0.1 * rng.normal(size=n)
    d = pd.DataFrame({"yi": y, "x": x, "study": study, "vi": vi}, index=[f"r{i}" for i in range(n)])
    return d, V


def test_simulate_reproducible_and_labelled():
    dat = drm.datasets.restoration()
    dat.loc[3, "yi"] = np.nan  # a dropped row is not simulated
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), dat)
    a = fit.simulate(5, seed=42)
    b = fit.simulate(5, seed=42)
    c = fit.simulate(5, seed=43)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    assert list(a.columns) == [f"sim_{i}" for i in range(1, 6)]
    assert a.index.equals(fit.design.row_labels) and 3 not in a.index and len(a) == 79
    with pytest.raises(drm.DrmError, match="nsim must be a positive integer"):
        fit.simulate(0)


def test_simulate_diagonal_moments():
    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), dat)
    sims = fit.simulate(20000, seed=1).to_numpy()
    mean = fit.predict().to_numpy()
    var = dat["vi"].to_numpy() + fit.sigma().to_numpy() ** 2
    z = (sims.mean(axis=1) - mean) / np.sqrt(var / sims.shape[1])
    assert np.max(np.abs(z)) < 4.5
    np.testing.assert_allclose(sims.var(axis=1), var, rtol=0.06)
    off = np.corrcoef(sims)[np.triu_indices(len(dat), 1)]
    assert np.max(np.abs(off)) < 0.04  # independent rows


def test_simulate_random_effects_and_block_v_moments():
    d, V = _clustered_data()
    fit = drm.fit(drm.Formula("yi ~ x + (1 + x|study) + meta_V(V=V)"), d)
    th = fit.params
    s_int = np.exp(th["sd(study):(Intercept)"])
    s_x = np.exp(th["sd(study|x):(Intercept)"])
    rho = 0.999999 * np.tanh(th["cor(study|(Intercept),x):(Intercept)"])
    sigma = np.exp(th["sigma:(Intercept)"])
    x = d["x"].to_numpy()
    same = (d["study"].to_numpy()[:, None] == d["study"].to_numpy()[None, :])
    z = np.column_stack([np.ones(len(d)), x])
    G = np.array([[s_int**2, rho * s_int * s_x], [rho * s_int * s_x, s_x**2]])
    S = V + sigma**2 * np.eye(len(d)) + same * (z @ G @ z.T)
    sims = fit.simulate(40000, seed=3).to_numpy()
    mean = th["mu:(Intercept)"] + th["mu:x"] * x
    np.testing.assert_allclose(sims.mean(axis=1), mean, atol=4.5 * np.sqrt(np.diag(S).max() / 40000))
    C = np.cov(sims)
    assert np.linalg.norm(C - S) / np.linalg.norm(S) < 0.03
    assert np.max(np.abs(C - S)) < 0.05 * np.max(np.diag(S))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_intervals_sane_and_reproducible():
    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"), dat)
    bt = drm.parametric_bootstrap(fit, nsim=300, seed=7, progress=False)
    assert list(bt.columns) == ["parameter", "estimate", "boot_mean", "boot_se", "lower", "upper", "n_converged"]
    assert list(bt["parameter"]) == list(fit.params.index)
    assert (bt["n_converged"] == 300).all()
    assert ((bt["lower"] < bt["estimate"]) & (bt["estimate"] < bt["upper"])).all()
    mu = bt["parameter"].str.startswith("mu:")
    # location: bootstrap SDs near the observed-information SEs
    np.testing.assert_allclose(bt.loc[mu, "boot_se"], fit.std_errors[mu.to_numpy()].to_numpy(), rtol=0.2)
    again = drm.parametric_bootstrap(fit, nsim=300, seed=7, progress=True, chunk_size=64)
    np.testing.assert_allclose(again["lower"], bt["lower"], rtol=1e-7)
    np.testing.assert_allclose(again["upper"], bt["upper"], rtol=1e-7)
    with pytest.raises(drm.DrmError, match="level must be between 0 and 1"):
        drm.parametric_bootstrap(fit, nsim=10, level=95)


def test_bootstrap_common_effect_model():
    """sigma ~ 0 has no variance parameter: every refit is the GLS fit of the draw, whose
    sampling SD is the model SE exactly (400 draws: the SD is within ~4% of it)."""
    dat = drm.datasets.restoration()
    fit = drm.fit(drm.Formula("yi ~ habitat + meta_V(V=vi)", "sigma ~ 0"), dat)
    bt = drm.parametric_bootstrap(fit, nsim=400, seed=3, progress=False)
    assert list(bt["parameter"]) == list(fit.params.index)
    assert (bt["n_converged"] == 400).all()
    np.testing.assert_allclose(bt["boot_se"], fit.std_errors.to_numpy(), rtol=0.15)


def test_bootstrap_coverage_smoke():
    """Percentile intervals of the mean cover the true value in most of 12 replicates."""
    rng = np.random.default_rng(11)
    covered = 0
    for rep in range(12):
        n = 30
        vi = rng.uniform(0.01, 0.05, n)
        x = rng.normal(size=n)
        y = 0.3 + 0.2 * x + rng.normal(size=n) * np.sqrt(vi + 0.15**2)
        fit = drm.fit(drm.Formula("yi ~ x + meta_V(V=vi)"), pd.DataFrame({"yi": y, "x": x, "vi": vi}))
        bt = drm.parametric_bootstrap(fit, nsim=200, seed=rep, progress=False).set_index("parameter")
        covered += bt.loc["mu:x", "lower"] <= 0.2 <= bt.loc["mu:x", "upper"]
    assert covered >= 9


def test_bootstrap_refits_equal_single_fits_with_random_effects():
    """The vmapped engine program (block structure) refits simulated data as drm.fit does."""
    from drmpy.simulation.bootstrap import _Refitter

    d, V = _clustered_data(seed=9)
    formula = drm.Formula("yi ~ x + (1|study) + meta_V(V=V)")
    fit = drm.fit(formula, d)
    assert fit.structure == "block"
    Y = fit.simulate(3, seed=2).to_numpy()
    refit = _Refitter(fit)
    phi0 = np.tile(refit.phi_hat, (3, 1))
    out = refit.run(refit.centred(Y), phi0, 200, 1e-8)
    for j in range(3):
        dj = d.assign(yi=Y[:, j])
        single = drm.fit(formula, dj)
        np.testing.assert_allclose(out["beta"][j], single.params.to_numpy()[:2], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(-out["f"][j], single.loglik, rtol=0, atol=1e-8)
        np.testing.assert_allclose(np.sqrt(out["var"][j][:2]), single.std_errors.to_numpy()[:2], rtol=1e-5)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_closed_form_derivatives_equal_autodiff_of_engine_objective(method):
    """The batch program's gradient and Hessian == jax.hessian of the engine's objective."""
    import jax
    import jax.numpy as jnp

    from drmpy.engine.batch import DiagArrays, diag_derivatives
    from drmpy.model.design import build_design
    from drmpy.engine.program import Control, prepare
    from drmpy.engine.likelihood import variance_objective

    f = drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat + duration")
    design = build_design(f, drm.datasets.restoration())
    (arrs, struct, beta0, phi0), _ = prepare(design, method, Control())
    a = DiagArrays(arrs.y, arrs.X, arrs.Z_sigma, arrs.v, arrs.w)
    obj = variance_objective(struct)

    @jax.jit
    def reference(phi):
        return obj(phi, arrs, struct), jax.grad(obj)(phi, arrs, struct), jax.hessian(obj)(phi, arrs, struct)

    for shift in (0.0, 0.4, -3.0):
        phi = jnp.asarray(phi0) + shift
        f1, g1, H1 = diag_derivatives(phi, a, method == "REML")
        f0, g0, H0 = reference(phi)
        np.testing.assert_allclose(f1, f0, rtol=1e-13)
        np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(H1, H0, rtol=1e-10, atol=1e-12)


def test_rounds_group_consecutive_tasks_of_one_shape():
    from drmpy.batch.batch import _rounds

    a, b = np.zeros((4, 3)), np.zeros((4, 5))
    tasks = [(0, 4, ("pool", a, 4), {}), (1, 4, ("pool", a, 4), {}), (2, 4, ("pool", a, 4), {}),
             (3, 2, ("pool", a, 2), {}), (4, 4, ("pool", b, 4), {}), (5, 4, ("pool", b, 4), {})]
    rounds = [[t[0] for t in r] for r in _rounds(iter(tasks), 2)]
    # at most one task per device; a new shape or another non-array argument starts a round
    assert rounds == [[0, 1], [2], [3], [4, 5]]
    assert [[t[0] for t in r] for r in _rounds(iter(tasks), 4)] == [[0, 1, 2], [3], [4, 5]]
