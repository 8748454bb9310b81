"""Which data rows a fit drops, and why: one rule set for :func:`drmpy.fit` and ``fit_batch``.

A row is dropped for the first of these reasons that applies, in this order: a missing value
in a model variable, a +-inf in a numeric model variable, a missing or non-finite sampling
variance (vector V only), a missing weight (weights given as a vector), a non-finite value of
a transformed variable (``np.log(x)`` of ``x <= 0``: found once the designs are built on the
remaining rows).  Each row carries one reason code (:data:`KEPT` or one of the others);
:func:`~drmpy.model.design.build_design` counts them per data set, ``fit_batch`` per group,
with the same words.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from . import frames

KEPT = 0
MISSING = 1
NON_FINITE = 2
BAD_V = 3
MISSING_WEIGHT = 4
TRANSFORMED = 5
N_CODES = 6  # KEPT and the five reasons

_REASON_TEXT = {
    MISSING: "missing values in model variables",
    NON_FINITE: "non-finite values in model variables",
    MISSING_WEIGHT: "missing weights",
    TRANSFORMED: "non-finite values of transformed variables",
}


def reason_text(code: int, v_name: str | None) -> str:
    """The words for one drop reason; ``v_name`` names the sampling-variance column (BAD_V)."""
    if code == BAD_V:
        return f"missing or non-finite sampling variance `{v_name}`"
    return _REASON_TEXT[code]


def row_reasons(frame: pd.DataFrame, columns: Iterable[str], v: np.ndarray | None) -> np.ndarray:
    """Reason code per row found before designs are built: MISSING (a missing value among
    ``columns``), NON_FINITE (+-inf in a numeric one), BAD_V (``v`` not finite; ``v`` is the
    vector V, None for no V or a full V), else KEPT."""
    used = list(dict.fromkeys(columns))
    reason = np.full(len(frame), KEPT, dtype=np.int64)
    if used:
        reason[frame[used].isna().any(axis=1).to_numpy()] = MISSING
    mark(reason, ~frames.without_infinities(frame, used), NON_FINITE)
    if v is not None:
        mark(reason, ~np.isfinite(v), BAD_V)
    return reason


def mark(reason: np.ndarray, bad: np.ndarray, code: int) -> None:
    """Give ``code`` to the rows flagged in ``bad`` that are still kept (in place)."""
    reason[(reason == KEPT) & bad] = code


def dropped_counts(reason: np.ndarray, v_name: str | None) -> dict[str, int]:
    """Dropped rows per reason, in the order of the rules (reasons with no row left out)."""
    counts = np.bincount(reason, minlength=N_CODES)
    return {reason_text(code, v_name): int(counts[code]) for code in range(1, N_CODES) if counts[code]}


def group_notes(codes: np.ndarray, reason: np.ndarray, n_groups: int, v_name: str | None) -> dict[int, list[str]]:
    """Per group code: one note per reason, e.g. ``"2 rows dropped (missing values in model
    variables)"``, in the order of the rules; groups with no dropped row are absent."""
    notes: dict[int, list[str]] = {}
    if not reason.any():
        return notes
    dropped = np.bincount(codes * N_CODES + reason, minlength=N_CODES * n_groups).reshape(n_groups, N_CODES)
    for g, r in zip(*np.nonzero(dropped[:, 1:])):
        n_drop = int(dropped[g, r + 1])
        what = reason_text(int(r) + 1, v_name)
        notes.setdefault(int(g), []).append(f"{n_drop} row{'s' if n_drop != 1 else ''} dropped ({what})")
    return notes


def no_rows_message(n_data: int, dropped: dict[str, int] | None = None) -> str:
    """The error when every row is dropped; ``dropped``: the counts, when known."""
    detail = f"; dropped: {dropped}" if dropped is not None else ""
    return (f"No rows remain after removing rows with missing or non-finite values "
            f"({n_data} rows in the data{detail}).")
