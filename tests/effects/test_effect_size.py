"""effect_size against metafor 3.8-1's escalc (tests/reference_extra/effects/escalc_cases.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import drmpy as drm

REF = Path(__file__).parents[1] / "reference_extra" / "effects" / "escalc_cases.json"
CASES = json.loads(REF.read_text())["cases"]


def _as_float(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _frame(case):
    return pd.DataFrame({k: _as_float(v) for k, v in case["data"].items()})


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_equals_escalc(case):
    options = case["options"] if isinstance(case["options"], dict) else {}
    out = drm.effect_size(case["measure"], _frame(case), **options, **case["args"])
    np.testing.assert_allclose(out["yi"], _as_float(case["yi"]), rtol=1e-10, atol=1e-13, equal_nan=True)
    np.testing.assert_allclose(out["vi"], _as_float(case["vi"]), rtol=1e-10, atol=1e-13, equal_nan=True)


def test_measures_all_covered_by_reference():
    covered = {c["measure"] for c in CASES}
    from drmpy.effects.effect_size import MEASURES

    assert covered == {m for ms in MEASURES.values() for m in ms}


def test_zero_cells_are_in_the_reference():
    case = next(c for c in CASES if c["name"] == "nielweise2007_OR")
    d = _frame(case)
    assert ((d["ai"] == 0) | (d["ci"] == 0)).sum() >= 5


def test_arrays_without_data_and_input_untouched():
    case = next(c for c in CASES if c["name"] == "normand1999_SMD")
    d = _frame(case)
    before = d.copy()
    arrays = {arg: d[col].to_numpy() for arg, col in case["args"].items()}
    out = drm.effect_size("SMD", **arrays)
    assert list(out.columns) == ["yi", "vi"]
    np.testing.assert_allclose(out["yi"], case["yi"], rtol=1e-10)
    with_data = drm.effect_size("SMD", d, var_names=("g", "var_g"), **case["args"])
    pd.testing.assert_frame_equal(d, before)
    assert list(with_data.columns) == list(d.columns) + ["g", "var_g"]


def test_polars_in_polars_out():
    pl = pytest.importorskip("polars")
    case = next(c for c in CASES if c["name"] == "bcg_OR")
    d = pl.from_pandas(_frame(case).astype({"tpos": "int64", "tneg": "int64", "cpos": "int64", "cneg": "int64"}))
    before = d.clone()
    out = drm.effect_size("OR", d, **case["args"])
    assert isinstance(out, pl.DataFrame)
    assert out.columns == d.columns + ["yi", "vi"]
    assert d.equals(before)
    np.testing.assert_allclose(out["yi"].to_numpy(), case["yi"], rtol=1e-10)


@pytest.mark.parametrize("measure, columns, fragment", [
    ("XYZ", {}, "unknown measure 'XYZ'. Known measures: means: MD, SMD"),
    ("SMD", {"m1i": [1.0], "sd1i": [1.0], "n1i": [5], "m2i": [1.0], "n2i": [5]}, "missing argument `sd2i`"),
    ("OR", {"ai": [1], "ci": [1], "di": [3]}, "missing argument `bi (or n1i)`"),
    ("MD", {"m1i": [1.0, 1.0], "sd1i": [1.0, -1.0], "n1i": [5, 5], "m2i": [1.0, 1.0], "sd2i": [1.0, 1.0],
            "n2i": [5, 5]}, "`sd1i` is negative (a standard deviation); first at row 1"),
    ("SMD", {"m1i": [1.0], "sd1i": [1.0], "n1i": [1], "m2i": [1.0], "sd2i": [1.0], "n2i": [5]}, "`n1i` is below 2"),
    ("ZCOR", {"ri": [0.2, 1.0], "ni": [10, 10]}, "`ri` is not a correlation strictly between -1 and 1; first at row 1"),
    ("OR", {"ai": [3, 6], "n1i": [10, 5], "ci": [1, 1], "n2i": [4, 4]}, "`ai` is larger than its group size `n1i`; first at row 1"),
    ("OR", {"ai": [3], "bi": [3], "n1i": [7], "ci": [1], "di": [3]}, "`n1i` is not equal to `ai` + `bi`"),
    ("PR", {"xi": [-1], "ni": [10]}, "`xi` is a negative count"),
    ("PLO", {"xi": [11], "ni": [10]}, "`xi` is larger than its group size `ni`"),
    ("IRR", {"x1i": [1], "t1i": [0.0], "x2i": [1], "t2i": [1.0]}, "`t1i` is not a positive person-time"),
    ("RR", {"ai": [1], "bi": [2], "ci": [1], "di": [2], "m1i": [1]}, "unexpected argument `m1i`"),
])
def test_bad_input_names_measure_argument_and_row(measure, columns, fragment):
    with pytest.raises(drm.DataError) as err:
        drm.effect_size(measure, **columns)
    assert fragment in str(err.value)
    if measure != "XYZ":
        assert f"effect_size('{measure}')" in str(err.value)


def test_bad_column_named_with_column_and_index_label():
    d = pd.DataFrame({"r": [0.1, -1.5], "n": [20, 30]}, index=["a", "b"])
    with pytest.raises(drm.DataError, match=r"`ri` \(column `r`\) is not a correlation .* row 1 \(index 'b'\)"):
        drm.effect_size("COR", d, ri="r", ni="n")
    with pytest.raises(drm.DataError, match="'nn' is not a column of `data`"):
        drm.effect_size("COR", d, ri="r", ni="nn")
    with pytest.raises(drm.DataError, match="`vtype` must be one of 'LS', 'AV'"):
        drm.effect_size("COR", d, ri="r", ni="n", vtype="UB")
    with pytest.raises(drm.DataError, match="`to` must be one of"):
        drm.effect_size("COR", d, ri="r", ni="n", to="some")


def test_missing_inputs_give_nan_and_fit_drops_them():
    d = pd.DataFrame({"ai": [4, np.nan, 10, 7], "n1i": [50, 60, 55, 40], "ci": [9, 12, 15, 9], "n2i": [50, 60, 52, 44]})
    out = drm.effect_size("OR", d, ai="ai", n1i="n1i", ci="ci", n2i="n2i")
    assert np.isnan(out.loc[1, "yi"]) and np.isnan(out.loc[1, "vi"])
    assert np.isfinite(out.drop(index=1)[["yi", "vi"]].to_numpy()).all()
