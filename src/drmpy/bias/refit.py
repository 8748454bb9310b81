"""Refits of a fitted model with a changed design: same rows, V, random effects and method."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DrmError
from ..model.design import FixedDesign, ModelDesign
from ..model.formula import Formula

__all__ = ["require_drm_fit", "data_column", "retained_values", "with_mu_column", "refit_design"]


def require_drm_fit(fit: Any, what: str) -> None:
    from ..results.fit import DrmFit

    if not isinstance(fit, DrmFit):
        raise DrmError(f"{what} needs a univariate fit from drm.fit, got {type(fit).__name__}.")


def data_column(fit, values: Any, argument: str) -> np.ndarray:
    """Values of ``values`` (a column name of the fit's data, a Series, or an array with one
    value per data row or per retained row) on the rows the fit retained, by position."""
    return retained_values(fit, values, argument)


def _same_rows(fit, index: pd.Index) -> bool:
    """Whether ``index`` is that of the data given to ``drm.fit``: as many rows, and at the
    retained positions the fitted row labels."""
    design = fit.design
    return len(index) == design.n_data and index[design.row_positions].equals(design.row_labels)


def retained_values(fit, values: Any, argument: str, data: Any = None) -> np.ndarray:
    """One value per retained row of ``fit``, taken by row position (never by index label,
    which may repeat: ``pd.concat`` without ``ignore_index``).

    ``values``: a column name of ``data`` (default: the data given to ``drm.fit``); a pandas
    Series indexed like that data (same labels in the same order: taken by position); or an
    array with one value per data row or per retained row.  A ``data`` or Series with
    another index is aligned by label, which needs unique labels (else a ``DrmError``).
    """
    from ..model import frames

    design = fit.design
    source = fit.data if data is None else data
    if isinstance(values, str):
        if source is None:
            raise DrmError(f"{argument}=`{values}`: this fit does not hold its data; give an array instead.")
        if values not in frames.column_names(source):
            raise DrmError(f"{argument}: column `{values}` is not in the data of the fit.")
        col = frames.as_pandas(source, [values])[values]
        if data is not None and not _same_rows(fit, col.index):
            return _by_label(fit, col, argument, "the data")
        return col.iloc[design.row_positions].to_numpy()
    if isinstance(values, pd.Series):
        return _series_values(fit, values, argument, source)
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) not in (design.n_data, design.nobs):
        raise DrmError(
            f"{argument}: expected a column name or {design.n_data} values (one per data row), "
            f"got shape {arr.shape}."
        )
    return arr[design.row_positions] if len(arr) == design.n_data else arr


def _series_values(fit, values: pd.Series, argument: str, source: Any) -> np.ndarray:
    """A Series on the retained rows: by position when its index is the data's, else by label."""
    from ..model import frames

    if source is not None and frames.is_pandas(source) and values.index.equals(source.index):
        return values.iloc[fit.design.row_positions].to_numpy()
    return _by_label(fit, values, argument, "the Series")


def _by_label(fit, values: pd.Series, argument: str, what: str) -> np.ndarray:
    """``values`` aligned by index label with the fitted rows; refused when labels repeat."""
    labels = fit.design.row_labels
    if not (values.index.is_unique and labels.is_unique):
        raise DrmError(
            f"{argument}: {what} is not indexed like the data given to drm.fit (same labels in the same order), "
            "and a repeated row label cannot be aligned by label; pass that data, a column name, an array with "
            "one value per row, or a Series with the data's index."
        )
    missing = labels.difference(values.index)
    if len(missing):
        raise DrmError(f"{argument}: {what} lacks the row label {missing[0]!r} of a row the fit used; it is "
                       "aligned by index with the fitted rows (fit.design.row_labels).")
    return values.reindex(labels).to_numpy()


def with_mu_column(fit, values: np.ndarray, term: str) -> ModelDesign:
    """The fit's design with one more ``mu`` column ``values`` named ``term`` (formula text
    updated to match; every other formula, V, the random effects and the rows unchanged)."""
    design = fit.design
    mu = design.fixed["mu"]
    if term in mu.terms:
        raise DrmError(f"The mu formula already has a term `{term}`.")
    X = np.column_stack([mu.matrix, values])
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise DrmError(f"Adding `{term}` to the mu formula makes its design rank-deficient.")
    texts = dict(fit.formula.text)
    texts["mu"] = f"{texts['mu']} + {term}"
    formula = Formula(*texts.values())
    object.__setattr__(formula, "env", fit.formula.env)
    # the design's formulaic spec of mu has no `term`: predictions on new data are refused
    fixed = {"mu": FixedDesign("mu", mu.terms + (term,), X, None), "sigma": design.fixed["sigma"]}
    return dataclasses.replace(design, formula=formula, fixed=fixed)


def refit_design(fit, design: ModelDesign, method: str | None = None):
    """A DrmFit of ``design`` with the fit's method (or ``method``) and control."""
    from ..api import warn_unless_converged
    from ..engine.program import prepare, run_fit
    from ..results.fit import DrmFit

    method = fit.method if method is None else method
    prepared, clusters = prepare(design, method, fit.control)
    raw = run_fit(prepared, fit.control)
    return warn_unless_converged(DrmFit(design, raw, method, fit.control, clusters,
                                         data=fit.data, env=fit.env))
