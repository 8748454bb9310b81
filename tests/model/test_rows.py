"""The row-dropping rules shared by build_design and fit_batch (src/drmpy/model/rows.py)."""
import numpy as np
import pandas as pd

import drmpy as drm
from drmpy.model import rows
from drmpy.model.design import build_design


def _frame():
    return pd.DataFrame({
        "yi": [0.1, np.nan, 0.3, np.inf, 0.5, 0.6, 0.7, 0.8],
        "x": [1.0, 2.0, np.nan, 4.0, 5.0, -1.0, 7.0, 8.0],
        "vi": [0.1, 0.1, 0.1, 0.1, np.nan, 0.1, 0.1, 0.1],
        "g": ["a", "a", "a", "a", "b", "b", "b", "b"],
    })


def test_first_rule_wins_in_order():
    dat = _frame()
    dat.loc[1, "vi"] = np.nan  # missing yi and missing vi: counted once, as a missing value
    reason = rows.row_reasons(dat, ["yi", "x", "vi"], dat["vi"].to_numpy())
    assert reason.tolist() == [rows.KEPT, rows.MISSING, rows.MISSING, rows.NON_FINITE, rows.MISSING,
                               rows.KEPT, rows.KEPT, rows.KEPT]
    reason = rows.row_reasons(dat, ["yi", "x"], dat["vi"].to_numpy())
    assert reason[4] == rows.BAD_V
    assert rows.dropped_counts(reason, "vi") == {
        "missing values in model variables": 2,
        "non-finite values in model variables": 1,
        "missing or non-finite sampling variance `vi`": 1,
    }
    notes = rows.group_notes(np.array([0, 0, 0, 0, 1, 1, 1, 1]), reason, 2, "vi")
    assert notes == {0: ["2 rows dropped (missing values in model variables)",
                         "1 row dropped (non-finite values in model variables)"],
                     1: ["1 row dropped (missing or non-finite sampling variance `vi`)"]}


def test_build_design_and_fit_batch_drop_the_same_rows_with_the_same_words():
    f = drm.Formula("yi ~ np.log(x) + meta_V(V=vi)")
    design = build_design(f, _frame())
    # row 5: log(-1) is not finite, found once the designs are built
    assert design.dropped == {
        "missing values in model variables": 2,
        "non-finite values in model variables": 1,
        "missing or non-finite sampling variance `vi`": 1,
        "non-finite values of transformed variables": 1,
    }
    assert list(design.row_labels) == [0, 6, 7]
    from drmpy.batch.batch import _build_groups
    gr = _build_groups(f, _frame(), "g")
    assert gr.row_pos.tolist() == [0, 6, 7]
    notes = [n for g in sorted(gr.notes) for n in gr.notes[g]]
    assert notes == ["2 rows dropped (missing values in model variables)",
                     "1 row dropped (non-finite values in model variables)",
                     "1 row dropped (missing or non-finite sampling variance `vi`)",
                     "1 row dropped (non-finite values of transformed variables)"]


def test_missing_vector_weight_counted_after_v_and_before_transformed():
    f = drm.Formula("yi ~ np.log(x) + meta_V(V=vi)")
    w = np.array([1.0, 1.0, 1.0, 1.0, np.nan, 1.0, 1.0, np.nan])  # row 4 already dropped for vi
    design = build_design(f, _frame(), weights=w)
    assert list(design.dropped) == ["missing values in model variables", "non-finite values in model variables",
                                    "missing or non-finite sampling variance `vi`", "missing weights",
                                    "non-finite values of transformed variables"]
    assert design.dropped["missing weights"] == 1
    assert list(design.row_labels) == [0, 6]
