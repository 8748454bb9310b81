"""Row padding of a single fit: small data sets of one model share one compiled program."""

import numpy as np
import pytest

import drmpy as drm
from drmpy.engine import program
from drmpy.engine.program import padded_size, single_fit_rows


def test_padded_rows_ladder():
    assert [single_fit_rows(n) for n in (1, 16, 64, 65, 128)] == [64, 64, 64, 128, 128]
    for n in (129, 200, 1000, 12345):
        assert single_fit_rows(n) == padded_size(n) >= n


def test_small_data_sets_share_one_program():
    data = drm.datasets.restoration()
    f = drm.Formula("yi ~ habitat + meta_V(V=vi)", "sigma ~ habitat")
    program._callables.clear()
    fits = [drm.fit(f, data.iloc[:n]) for n in (20, 41, 64)]
    assert len(program._callables) == 1
    # padding rows change nothing: the fit on 41 rows equals the dense likelihood's optimum
    d = data.iloc[:41]
    y, v = d["yi"].to_numpy(), d["vi"].to_numpy()
    forest = (d["habitat"] == "forest").to_numpy()
    X = np.column_stack([np.ones(41), forest])
    b = fits[1].params.to_numpy()
    s2 = v + np.exp(2 * (b[2] + b[3] * forest))
    r = y - X @ b[:2]
    assert fits[1].loglik == pytest.approx(-0.5 * np.sum(np.log(2 * np.pi * s2) + r**2 / s2), abs=1e-10)


def test_padded_counts_ladder():
    assert [program.padded_count(n) for n in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    for n in (65, 100, 1000):
        assert program.padded_count(n) == padded_size(n) >= n


def test_designs_with_different_level_counts_share_one_program():
    # 20 and 30 articles (37 and 58 rows): both pad to 32 levels, 32 blocks and 64 rows
    data = drm.datasets.lim2014()
    articles = data["article"].unique()
    f = drm.Formula("yi ~ 1 + (1 | article) + meta_V(V=vi)")
    program._callables.clear()
    fits = [drm.fit(f, data[data["article"].isin(articles[:m])], method="ML") for m in (20, 30)]
    assert len(program._callables) == 1
    # padded levels and blocks change nothing: the log-likelihood at the estimate is the
    # dense multivariate normal one, S = diag(v + sigma^2) + tau^2 Z Z'
    d = data[data["article"].isin(articles[:20])]
    y, v = d["yi"].to_numpy(), d["vi"].to_numpy()
    Z = (d["article"].to_numpy(dtype=object)[:, None] == np.asarray(articles[:20], dtype=object)[None, :]).astype(float)
    mu, log_sigma, log_tau = fits[0].params.to_numpy()
    S = np.diag(v + np.exp(2 * log_sigma)) + np.exp(2 * log_tau) * Z @ Z.T
    r = y - mu
    _, logdet = np.linalg.slogdet(S)
    dense = -0.5 * (len(y) * np.log(2 * np.pi) + logdet + r @ np.linalg.solve(S, r))
    assert fits[0].loglik == pytest.approx(dense, abs=1e-10)
