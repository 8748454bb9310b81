"""Refits of a fitted model with a changed design: same rows, V, random effects and method."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import DrmError
from ..model.design import FixedDesign, ModelDesign
from ..model.formula import Formula

__all__ = ["require_drm_fit", "data_column", "with_mu_column", "refit_design"]


def require_drm_fit(fit: Any, what: str) -> None:
    from ..results.fit import DrmFit

    if not isinstance(fit, DrmFit):
        raise DrmError(f"{what} needs a univariate fit from drm.fit, got {type(fit).__name__}.")


def data_column(fit, values: Any, argument: str) -> np.ndarray:
    """Values of ``values`` (a column name of the fit's data, or an array with one value per
    data row) on the rows the fit retained, float64."""
    from ..model import frames

    design = fit.design
    if isinstance(values, str):
        data = getattr(fit, "_data", None)
        if data is None:
            raise DrmError(f"{argument}=`{values}`: this fit does not hold its data; give an array instead.")
        if values not in frames.column_names(data):
            raise DrmError(f"{argument}: column `{values}` is not in the data of the fit.")
        col = frames.as_pandas(data, [values])[values]
        return col.iloc[design.row_positions].to_numpy()
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) not in (design.n_data, design.nobs):
        raise DrmError(
            f"{argument}: expected a column name or {design.n_data} values (one per data row), "
            f"got shape {arr.shape}."
        )
    return arr[design.row_positions] if len(arr) == design.n_data else arr


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
    from ..api import _warn_unless_converged
    from ..engine.program import prepare, run_fit
    from ..results.fit import DrmFit

    method = fit.method if method is None else method
    prepared, clusters = prepare(design, method, fit._control)
    raw = run_fit(prepared, fit._control)
    return _warn_unless_converged(DrmFit(design, raw, method, fit._control, clusters,
                                         data=getattr(fit, "_data", None), env=getattr(fit, "_env", None)))
