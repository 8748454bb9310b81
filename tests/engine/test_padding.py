"""Row padding of a single fit: small data sets of one model share one compiled program."""

import numpy as np
import pytest

import drmpy as drm
from drmpy.engine import program
from drmpy.engine.program import _padded_size, single_fit_rows


def test_padded_rows_ladder():
    assert [single_fit_rows(n) for n in (1, 16, 64, 65, 128)] == [64, 64, 64, 128, 128]
    for n in (129, 200, 1000, 12345):
        assert single_fit_rows(n) == _padded_size(n) >= n


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
