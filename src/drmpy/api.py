"""``fit()``: formula + data -> :class:`~drmpy.result.DrmFit`.

Designs and their prepared device arrays are cached by the formula text and a
fingerprint of the columns (and V, K, weights) they use, so refitting the same model to
the same data skips formula handling and array set-up.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .families import BivariateGaussian, Family, Gaussian, biv_gaussian, gaussian, normal_mixture, student
from .model.design import ModelDesign, build_design
from .engine.program import Control, boundary_candidates, prepare, run_fit
from .errors import ConvergenceWarning, DrmError
from .model.fingerprint import hash_array, hash_column, hash_object
from .model.formula import Formula
from .results.fit import DrmFit

__all__ = ["fit", "gaussian", "Gaussian", "biv_gaussian", "BivariateGaussian", "student", "normal_mixture",
           "check"]


def _is_bivariate_family(family: Any) -> bool | None:
    """True for biv_gaussian() or two gaussians, False for gaussian(), None when unknown."""
    if family is None:
        return None
    if isinstance(family, BivariateGaussian):
        return True
    if isinstance(family, Family):  # gaussian(), student(), normal_mixture(): one response
        return False
    if isinstance(family, (list, tuple)) and len(family) == 2 and all(isinstance(f, Gaussian) for f in family):
        return True
    raise DrmError(
        f"family must be drm.gaussian(), drm.student(), drm.normal_mixture(), drm.biv_gaussian() or "
        f"[drm.gaussian(), drm.gaussian()]; got {family!r}."
    )


_CACHE_SIZE = 16
_design_cache: "OrderedDict[tuple, tuple[ModelDesign, dict]]" = OrderedDict()
_columns_by_formula: dict[tuple, tuple[str, ...]] = {}


_SAMPLE_ROWS = 64  # rows per column the cache key hashes; a hit is then checked in full


def _fingerprint(formula: Formula, data: Any, weights: Any, env: Mapping[str, Any] | None,
                 sampled: bool = True):
    """Hash of everything the design depends on, or None when it cannot be formed cheaply.

    ``sampled=True`` hashes the columns' names, dtypes, lengths and about 64 evenly spaced
    rows (a key: a cache hit is confirmed by :func:`_same_data`); ``sampled=False`` hashes
    every value (for designs that dropped rows, whose data a comparison cannot confirm).
    V, K and weight arrays given outside the data are hashed in full either way.
    """
    key = formula.key()
    cols = _columns_by_formula.get(key)
    if cols is None or not isinstance(data, pd.DataFrame):
        return None
    if any(c not in data.columns for c in cols):
        return None
    n = len(data)
    rows = slice(None, None, max(1, n // _SAMPLE_ROWS)) if sampled else slice(None)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(n).encode())
    try:
        for c in cols:
            h.update(c.encode())
            hash_column(h, data[c].iloc[rows])
        hash_array(h, np.asarray(data.index[rows]))
        names = []
        if formula.meta_v is not None and formula.meta_v.name not in data.columns:
            names.append(formula.meta_v.name)
        names.extend(t.relmat for t in formula.random_terms if t.relmat)
        names.extend(t.relmat_levels for t in formula.random_terms if t.relmat_levels)
        for name in names:
            source = env if env is not None and name in env else formula.env
            if name not in source:
                return None
            hash_object(h, source[name])
        if weights is not None and not isinstance(weights, str):
            hash_array(h, np.asarray(weights, dtype=np.float64))
    except (TypeError, ValueError):
        return None
    return (key, weights if isinstance(weights, str) else None, sampled, h.hexdigest())


def _copy_on_write() -> bool:
    """Whether pandas copies a shared buffer before any write (always from pandas 3)."""
    if int(pd.__version__.split(".")[0]) >= 3:
        return True
    try:
        return pd.get_option("mode.copy_on_write") is True
    except (KeyError, pd.errors.OptionError):
        return False


def _same_buffer(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two arrays are views of the same memory with the same layout."""
    return (x.__array_interface__["data"][0] == y.__array_interface__["data"][0]
            and x.strides == y.strides and x.shape == y.shape and x.dtype == y.dtype)


def _same_column(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns hold the same values (categories, and their order, included).

    Under pandas' copy-on-write two columns backed by one buffer hold the same values (a
    write to either copies it first), so the design's own copy, which shares the caller's
    buffers until the caller writes, is confirmed without reading a million values."""
    if a.dtype != b.dtype or len(a) != len(b):
        return False
    if (not isinstance(a.dtype, pd.CategoricalDtype) and _copy_on_write()
            and _same_buffer(a.to_numpy(), b.to_numpy())):
        return True
    if isinstance(a.dtype, pd.CategoricalDtype):
        return (list(a.cat.categories) == list(b.cat.categories)
                and np.array_equal(a.cat.codes.to_numpy(), b.cat.codes.to_numpy()))
    x, y = a.to_numpy(), b.to_numpy()
    if x.dtype == object:  # 1, 1.0 and True compare equal as objects; their hashes do not
        try:
            return np.array_equal(pd.util.hash_array(x, categorize=False), pd.util.hash_array(y, categorize=False))
        except TypeError:
            return False
    return bool(np.array_equal(x, y))


def _same_data(design: ModelDesign, data: pd.DataFrame) -> bool:
    """Whether ``data`` has the values the design was built from (compared in full; the
    design's frame is its own copy of the columns it read).  False for designs that dropped
    rows: the dropped values are not kept."""
    frame = design.frame
    if frame is None or design.n_dropped or len(frame) != len(data):
        return False
    if not (data.index.equals(frame.index) and data.index.dtype == frame.index.dtype):
        return False
    return all(_same_column(data[c], frame[c]) for c in design.columns)


def _design_for(formula: Formula, data: Any, weights: Any, env) -> tuple[ModelDesign, dict]:
    fp = _fingerprint(formula, data, weights, env)
    entry = _design_cache.get(fp) if fp is not None else None
    if entry is not None and entry[0].n_dropped:
        # its data cannot be compared: the design is stored under its full hash
        fp = _fingerprint(formula, data, weights, env, sampled=False)
        entry = _design_cache.get(fp)
    elif entry is not None and not _same_data(entry[0], data):
        entry = None
    if entry is not None:
        _design_cache.move_to_end(fp)
        return entry
    design = build_design(formula, data, weights=weights, env=env)
    entry = (design, {})
    key = formula.key()
    if key not in _columns_by_formula:
        _columns_by_formula[key] = design.columns
    fp = _fingerprint(formula, data, weights, env)
    if fp is not None and design.n_dropped:
        # the sampled key marks "look up by full hash" (an entry whose design dropped rows)
        _design_cache[fp] = entry
        fp = _fingerprint(formula, data, weights, env, sampled=False)
    if fp is not None:
        _design_cache[fp] = entry
        while len(_design_cache) > _CACHE_SIZE:
            _design_cache.popitem(last=False)
    return entry


def clear_cache() -> None:
    """Forget cached designs and design matrices (compiled programs stay cached)."""
    from .model.design import clear_matrix_cache

    _design_cache.clear()
    _columns_by_formula.clear()
    clear_matrix_cache()


def fit(
    formula: Formula | str,
    data: Any,
    *,
    family: Family | BivariateGaussian | list | tuple | None = None,
    weights: Any = None,
    method: str = "ML",
    env: Mapping[str, Any] | None = None,
    control: Mapping[str, Any] | Control | None = None,
) -> DrmFit:
    """Fit a Gaussian distributional (location-scale) meta-regression.

    Parameters
    ----------
    formula:
        A :class:`drmpy.Formula`, or a string taken as the ``mu`` formula alone.
    data:
        pandas or polars DataFrame.  Never modified.
    family:
        ``drm.gaussian()`` (default for one response); ``drm.student()`` or
        ``drm.normal_mixture()`` (robust random effects with known V, ML only, fitted by
        :mod:`drmpy.robust`; their extra parameters ``nu`` or ``sigma_out``/``p_out`` take
        formulas like sigma); or ``drm.biv_gaussian()`` (equivalently
        ``[drm.gaussian(), drm.gaussian()]``, default when the formula has ``mu1``/``mu2``):
        the bivariate model with ``sigma1``, ``sigma2`` and ``rho12`` formulas, returning a
        :class:`~drmpy.BivariateFit`.
    weights:
        Column name or array: each row's log-likelihood is multiplied by its weight
        (not a sampling variance; unlike metafor's ``weights``).  Bivariate models: one
        weight per study (data row), multiplying the study's log-likelihood; needs a V
        that is block-diagonal by study.
    method:
        ``"ML"`` (default) or ``"REML"``.
    env:
        Mapping searched (after the data's columns) for ``meta_V(V = name)`` and
        ``relmat(..., K = name)`` objects, before the namespace where the Formula was built.
    control:
        ``{"max_iter": 200, "gtol": 1e-8, "structure": None}``.

    A fit that does not converge is returned with ``converged=False`` and a
    :class:`~drmpy.ConvergenceWarning`; ``fit.check()`` says why.
    """
    formula = Formula.coerce(formula, _env_depth=2)
    bivariate = _is_bivariate_family(family)
    if bivariate is True and not formula.is_bivariate:
        raise DrmError(
            f"family {family!r} is bivariate, but the formula has one response; give mu1= and mu2= formulas."
        )
    if bivariate is False and formula.is_bivariate:
        raise DrmError("The formula has mu1 and mu2 (two responses); use family=drm.biv_gaussian().")
    method_u = str(method).upper()
    if method_u not in ("ML", "REML"):
        raise DrmError(f"method must be 'ML' or 'REML', got {method!r}.")
    ctrl = Control.coerce(control)
    if env is not None and not isinstance(env, Mapping):
        raise DrmError(f"env must be a mapping (e.g. a dict), got {type(env).__name__}.")
    if formula.is_bivariate:
        return warn_unless_converged(_fit_bivariate(formula, data, weights, method_u, env, ctrl))
    if isinstance(family, Family) and not family.gaussian:
        return warn_unless_converged(_fit_robust(formula, data, family, weights, method_u, env, ctrl))
    if formula.family_dpars:
        name = formula.family_dpars[0]
        from .model.formula import family_dpar_names

        raise DrmError(f"`{formula.text[name]}`: {name} is a parameter of family "
                       f"{family_dpar_names()[name]}(), not of the Gaussian model; pass "
                       f"family=drm.{family_dpar_names()[name]}().")
    design, prepared_cache = _design_for(formula, data, weights, env)
    pkey = (method_u, ctrl.structure)
    if pkey not in prepared_cache:
        prepared_cache[pkey] = prepare(design, method_u, ctrl) + (boundary_candidates(design),)
    prepared, clusters, boundary = prepared_cache[pkey]
    raw = run_fit(prepared, ctrl, boundary)
    # the caller's data and env by reference (never modified): columns named later, e.g.
    # coef_test(cluster=), leave_one_out(by=), egger_test(ni=)
    result = DrmFit(design, raw, method_u, ctrl, clusters, data=data, env=env)
    return warn_unless_converged(result)


def warn_unless_converged(result):
    if not result.converged:
        warnings.warn(
            f"drmpy: the optimiser did not converge ({result.convergence_message}); see fit.check().",
            ConvergenceWarning,
            stacklevel=3,
        )
    return result


def _fit_bivariate(formula: Formula, data: Any, weights: Any, method: str, env, ctrl: Control):
    from .model.bivariate import build_bivariate_design
    from .engine.bivariate import prepare_bivariate
    from .results.bivariate import BivariateFit

    design = build_bivariate_design(formula, data, env=env, weights=weights)
    raw = run_fit(prepare_bivariate(design, method, ctrl), ctrl)
    return BivariateFit(design, raw, method, ctrl)


def _fit_robust(formula: Formula, data: Any, family: Family, weights: Any, method: str, env, ctrl: Control):
    """Student-t or normal-mixture random effects (drmpy.robust), with the normal model beside."""
    from .robust.program import NormalReference, check_robust_data, fit_robust, robust_formula
    from .results.robust_fit import RobustFit

    if method != "ML":
        raise DrmError(f"family {family!r} is fitted by maximum likelihood only (as metaplus): REML is not "
                       "defined for a non-Gaussian random effect; use method='ML'.")
    formula = robust_formula(formula, family)
    design = build_design(formula, data, weights=weights, env=env)
    check_robust_data(design, family)
    # the normal model with the same mu, sigma and random-effect formulas: the start of the
    # robust fit, and for student() the boundary nu = infinity (1/nu = 0)
    gformula = formula.without_dpars(formula.family_dpars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gfit = fit(gformula, data, family=gaussian(), weights=weights, method="ML", env=env, control=ctrl)
    normal = NormalReference(gfit.params.to_numpy(), gfit.vcov().to_numpy(), gfit.loglik, gfit.converged)
    raw = fit_robust(design, family, ctrl, normal)
    return RobustFit(design, raw, method, ctrl, family, data=data, env=env)


def check(fit_result: DrmFit) -> pd.DataFrame:
    """Same as ``fit_result.check()``."""
    return fit_result.check()
