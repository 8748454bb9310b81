"""Model spec of the bivariate Gaussian model: two responses per study, incomplete pairs kept.

Per study i the pair ``(y1_i, y2_i)`` has means ``mu1_i``, ``mu2_i``, residual SDs
``sigma1_i``, ``sigma2_i`` and residual correlation ``rho12_i``; stacked row-paired
``(y1_1, y2_1, y1_2, ...)``, ``y ~ MVN(mu, V + blockdiag_i B_i)`` with
``B_i = [[s1^2, r s1 s2], [r s1 s2, s2^2]]``.

Rows (studies) and responses are retained separately:

* response k of study i is kept when ``y_k``, every variable of the ``mu_k`` and
  ``sigma_k`` formulas and its sampling variance ``V[2i+k, 2i+k]`` are present;
* a study is retained when at least one of its responses is kept;
* both responses kept form a correlated pair when the ``rho12`` variables are present too;
  otherwise they enter as independent marginals (counted, and reported by ``check()``).

Arrays hold every retained study; entries of responses that are not kept are zero and
flagged by ``kept``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import frames
from .design import (FixedDesign, check_full_rank, _materialize, response_values, check_weights,
                     formula_columns, formula_context, require_scale_coefficients, response_columns)
from ..errors import CovarianceError, DataError
from .formula import Formula
from .known_v import KnownV, RawV, finalize_v

__all__ = ["meta_vcov_bivariate", "BivariateDesign", "build_bivariate_design"]

_EPS = np.finfo(float).eps
_RESPONSE_DPARS = (("mu1", "sigma1"), ("mu2", "sigma2"))


# ------------------------------------------------------------------------------------------
# the known sampling covariance


def _as_values(x: Any, name: str, n: int | None) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CovarianceError(f"meta_vcov_bivariate: {name} must be numeric.") from exc
    if n is not None and len(arr) not in (1, n):
        raise CovarianceError(f"meta_vcov_bivariate: {name} has length {len(arr)}; expected 1 or {n}.")
    return arr


def meta_vcov_bivariate(v1: Any, v2: Any, cov12: Any = None, cor12: Any = None):
    """Row-paired block-diagonal sampling covariance of two outcomes per study.

    Returns a ``scipy.sparse.csr_matrix`` of shape (2n, 2n) ordered ``(y1_1, y2_1, y1_2, ...)``
    whose 2 x 2 block i is ``[[v1_i, c_i], [c_i, v2_i]]`` with ``c_i = cov12_i`` or
    ``cor12_i * sqrt(v1_i v2_i)`` (0 when neither is given).  Arguments have length 1 or n.

    A NaN variance marks a response without a sampling variance (its ``y`` must then be
    missing too, or the response is dropped and counted); its covariance must be NaN or 0.
    Otherwise values must be finite, variances >= 0, ``|cor12| <= 1``, and each block
    positive definite: ``|c_i| < sqrt(v1_i v2_i) (1 - sqrt(eps))``, so a zero variance
    needs a zero covariance.
    """
    import scipy.sparse as sp

    if cov12 is not None and cor12 is not None:
        raise CovarianceError("meta_vcov_bivariate: give cov12 or cor12, not both.")
    a = _as_values(v1, "v1", None)
    b = _as_values(v2, "v2", None)
    n = max(len(a), len(b))
    for name, arr in (("v1", a), ("v2", b)):
        if len(arr) not in (1, n):
            raise CovarianceError(f"meta_vcov_bivariate: {name} has length {len(arr)}; expected 1 or {n}.")
    a = np.broadcast_to(a, n).copy()
    b = np.broadcast_to(b, n).copy()
    missing = np.isnan(a) | np.isnan(b)
    for name, arr in (("v1", a), ("v2", b)):
        bad = np.flatnonzero(np.isinf(arr))
        if bad.size:
            raise CovarianceError(f"meta_vcov_bivariate: {name} is infinite at row {bad[0]}.")
        bad = np.flatnonzero(arr < 0)
        if bad.size:
            raise CovarianceError(
                f"meta_vcov_bivariate: {name} must be >= 0; row {bad[0]} has {arr[bad[0]]:g}."
            )
    if cor12 is not None:
        r = np.broadcast_to(_as_values(cor12, "cor12", n), n)
        bad = np.flatnonzero(~missing & ~np.isfinite(r))
        if bad.size:
            raise CovarianceError(f"meta_vcov_bivariate: cor12 is missing or non-finite at row {bad[0]}.")
        bad = np.flatnonzero(np.abs(np.where(np.isfinite(r), r, 0.0)) > 1)
        if bad.size:
            raise CovarianceError(f"meta_vcov_bivariate: |cor12| must be <= 1; row {bad[0]} has {r[bad[0]]:g}.")
        c = r * np.sqrt(a * b)
    elif cov12 is not None:
        c = np.broadcast_to(_as_values(cov12, "cov12", n), n).copy()
        bad = np.flatnonzero(~missing & ~np.isfinite(c))
        if bad.size:
            raise CovarianceError(f"meta_vcov_bivariate: cov12 is missing or non-finite at row {bad[0]}.")
    else:
        c = np.zeros(n)
    bad = np.flatnonzero(missing & np.isfinite(c) & (c != 0))
    if bad.size:
        raise CovarianceError(
            f"meta_vcov_bivariate: row {bad[0]} has a missing variance but covariance {c[bad[0]]:g}."
        )
    c = np.where(missing, 0.0, c)
    limit = np.sqrt(np.where(missing, 0.0, a * b)) * (1.0 - np.sqrt(_EPS))
    singular = ~missing & (np.abs(c) > 0) & (np.abs(c) >= limit)
    bad = np.flatnonzero(singular)
    if bad.size:
        i = bad[0]
        what = ("a zero variance needs a zero covariance" if a[i] * b[i] == 0
                else "|cov12| >= sqrt(v1 v2): the 2 x 2 block is singular or indefinite")
        raise CovarianceError(
            f"meta_vcov_bivariate: row {i} (v1={a[i]:g}, v2={b[i]:g}, cov12={c[i]:g}): {what}."
        )
    rows = np.concatenate([2 * np.arange(n), 2 * np.arange(n) + 1, 2 * np.arange(n), 2 * np.arange(n) + 1])
    cols = np.concatenate([2 * np.arange(n), 2 * np.arange(n) + 1, 2 * np.arange(n) + 1, 2 * np.arange(n)])
    vals = np.concatenate([a, b, c, c])
    keep = vals != 0
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(2 * n, 2 * n))


@dataclass(frozen=True)
class PairV:
    """V restricted to the retained studies.

    ``blocks`` (n, 2, 2) when V is block-diagonal by study (entries of responses that are
    not kept are zero); otherwise ``known`` holds the dense V of the kept entries
    (row-paired order, validated like a univariate V).
    """

    name: str | None
    kind: str  # none | sparse | dense (as given)
    blocks: np.ndarray | None = field(default=None, repr=False)
    known: KnownV | None = field(default=None, repr=False)

    @property
    def block_diagonal(self) -> bool:
        return self.known is None


def _resolve_pair_v(name: str, env: Mapping[str, Any] | None, namespace: Mapping[str, Any], n_data: int):
    import scipy.sparse as sp

    if env is not None and name in env:
        obj = env[name]
    elif name in namespace:
        obj = namespace[name]
    else:
        raise CovarianceError(
            f"meta_V(V = {name}): `{name}` is not a key of `env=` or a variable in the namespace where "
            "the Formula was built (a bivariate V is a 2n x 2n matrix, e.g. from drm.meta_vcov_bivariate)."
        )
    shape = (2 * n_data, 2 * n_data)
    if sp.issparse(obj):
        if obj.shape != shape:
            raise CovarianceError(f"meta_V(V = {name}): V has shape {obj.shape}; the data need {shape} (2n x 2n, row-paired).")
        return sp.csr_matrix(obj, dtype=np.float64), "sparse"
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CovarianceError(f"meta_V(V = {name}): V must be numeric.") from exc
    if arr.shape != shape:
        raise CovarianceError(
            f"meta_V(V = {name}): V has shape {arr.shape}; the data need {shape} (2n x 2n, row-paired "
            "y1_1, y2_1, y1_2, ...; see drm.meta_vcov_bivariate)."
        )
    return arr, "dense"


def _entry_label(labels: pd.Index, entry: int | np.integer, responses: tuple[str, str]) -> str:
    return f"row {labels[entry // 2]!r} ({responses[entry % 2]})"


def _pair_blocks(matrix, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The (n, 2, 2) within-study blocks of a row-paired V, and the (row, col) positions of
    its non-zero entries that link different studies."""
    import scipy.sparse as sp

    n2 = matrix.shape[0]
    n = n2 // 2
    if kind == "sparse":
        coo = sp.coo_matrix(matrix)
        r, c, v = coo.row, coo.col, coo.data
    else:
        r, c = np.nonzero(matrix)
        v = matrix[r, c]
    same = (r // 2) == (c // 2)
    blocks = np.zeros((n, 2, 2))
    np.add.at(blocks, (r[same] // 2, r[same] % 2, c[same] % 2), v[same])
    return blocks, np.stack([r[~same], c[~same]], axis=1)


# ------------------------------------------------------------------------------------------
# the design


@dataclass(frozen=True)
class BivariateDesign:
    """Numeric spec of a bivariate model on the retained studies (n of them).

    Attributes:
        y: (n, 2) responses, 0 where a response is not kept.
        kept: (n, 2) bool, which responses enter the likelihood.
        pair: (n,) bool, both kept and correlated through rho12.
        fixed: per dpar (mu1, mu2, sigma1, sigma2, rho12) the design over all n studies;
            rows where the dpar does not apply are zero.
        v: the known sampling covariance (PairV).
        dropped: responses dropped, by reason (counts of responses, not studies).
        n_dropped_studies: data rows with no kept response.
        n_decoupled: studies with both responses kept but rho12 variables missing.
    """

    formula: Formula
    y: np.ndarray = field(repr=False)
    kept: np.ndarray = field(repr=False)
    pair: np.ndarray = field(repr=False)
    fixed: Mapping[str, FixedDesign] = field(repr=False)
    v: PairV = field(repr=False)
    row_labels: pd.Index = field(repr=False)
    n_data: int
    dropped: Mapping[str, int]
    n_dropped_studies: int
    dropped_labels: tuple = field(repr=False)
    n_decoupled: int
    columns: tuple[str, ...] = ()
    weights: np.ndarray | None = field(default=None, repr=False)  # (n,) per retained study, or None

    random: tuple = ()  # no random effects in bivariate models (yet)

    @property
    def nobs(self) -> int:
        """Studies with at least one kept response."""
        return len(self.y)

    @property
    def n_responses(self) -> int:
        return int(self.kept.sum())

    @property
    def n_dropped(self) -> int:
        """Responses dropped (summed over reasons)."""
        return int(sum(self.dropped.values()))

    @property
    def responses(self) -> tuple[str, str]:
        return self.formula.responses  # type: ignore[return-value]

    @property
    def designs(self) -> list[FixedDesign]:
        return [self.fixed[d] for d in ("mu1", "mu2", "sigma1", "sigma2", "rho12")]

    @property
    def v_diag(self) -> np.ndarray:
        """(n, 2) sampling variances (0 where not kept or without meta_V)."""
        if self.v.blocks is not None:
            return self.v.blocks[:, [0, 1], [0, 1]].copy()
        out = np.zeros((self.nobs, 2))
        if self.v.known is not None:
            out[self.kept] = self.v.known.diag
        return out


def _present(frame: pd.DataFrame, columns) -> np.ndarray:
    """Per row: every column present (not missing) and finite."""
    columns = list(columns)
    notna = frame[columns].notna().all(axis=1).to_numpy() if columns else np.ones(len(frame), dtype=bool)
    return notna & frames.without_infinities(frame, columns)


def build_bivariate_design(formula: Formula, data: Any, *, env: Mapping[str, Any] | None = None,
                           weights: Any = None) -> BivariateDesign:
    """Resolve the five formulas and V against ``data`` (one row per study).

    ``weights`` (a column name or one value per data row): each study's log-likelihood is
    multiplied by its weight; a study with a missing weight is dropped (its responses
    counted), a negative weight is an error, and non-unit weights need a V that is
    block-diagonal by study (otherwise the log-likelihood does not separate by study).
    """
    all_columns, texts, namespace, context = formula_context(formula, data, env)
    if isinstance(weights, str) and weights not in all_columns:
        raise DataError(f"weights: column `{weights}` is not in the data.")
    responses = formula.responses

    variables: dict[str, list[str]] = {}
    for k, resp in enumerate(responses):
        dpar = f"mu{k + 1}"
        variables[f"y{k + 1}"] = response_columns(resp, dpar, texts[dpar], all_columns, context)
    for dpar, rhs in formula.dpars.items():
        variables[dpar] = formula_columns(dpar, rhs, texts[dpar], all_columns, context)
    columns = tuple(dict.fromkeys(c for cols in variables.values() for c in cols))
    if isinstance(weights, str):
        columns = tuple(dict.fromkeys(columns + (weights,)))
    frame = frames.as_pandas(data, columns)
    n_data = len(frame)
    labels = frame.index
    w_all = _study_weights(weights, frame, n_data)

    meta_v = formula.meta_v
    raw_matrix, v_kind = (None, "none")
    blocks_all = None
    off_block = np.zeros((0, 2), dtype=np.int64)
    if meta_v is not None:
        raw_matrix, v_kind = _resolve_pair_v(meta_v.name, env, namespace, n_data)
        blocks_all, off_block = _pair_blocks(raw_matrix, v_kind)

    # ---- which responses are kept
    dropped: dict[str, int] = {}
    kept = np.zeros((n_data, 2), dtype=bool)
    for k, (mu_d, sigma_d) in enumerate(_RESPONSE_DPARS):
        y_ok = _present(frame, variables[f"y{k + 1}"])
        pred_ok = _present(frame, variables[mu_d] + variables[sigma_d])
        ok = y_ok & pred_ok
        name = responses[k]
        if (~y_ok).any():
            dropped[f"{name}: missing response"] = int((~y_ok).sum())
        if (y_ok & ~pred_ok).any():
            dropped[f"{name}: missing {mu_d}/{sigma_d} predictors"] = int((y_ok & ~pred_ok).sum())
        if blocks_all is not None:
            vk = blocks_all[:, k, k]
            v_ok = np.isfinite(vk)
            if (ok & ~v_ok).any():
                # type checker: blocks_all exists only with a meta_V term
                dropped[f"{name}: missing sampling variance in `{meta_v.name}`"] = int((ok & ~v_ok).sum())  # type: ignore[union-attr]
            ok &= v_ok
        if w_all is not None:
            w_ok = np.isfinite(w_all)
            if (ok & ~w_ok).any():
                dropped[f"{name}: missing weight"] = int((ok & ~w_ok).sum())
            ok &= w_ok
        kept[:, k] = ok
    y_all = np.zeros((n_data, 2))
    for k, resp in enumerate(responses):
        rows = kept[:, k]
        if rows.any():
            y_all[rows, k] = response_values(frame.loc[rows], resp, context)
    study = kept.any(axis=1)
    both = kept.all(axis=1)
    rho_ok = _present(frame, variables["rho12"])
    pair = both & rho_ok
    n = int(study.sum())
    if n == 0:
        raise DataError(
            f"No study keeps a response after removing missing values ({n_data} rows in the data; "
            f"dropped responses: {dropped})."
        )

    # ---- designs, each on the rows where it applies, scattered over the retained studies
    applies = {"mu1": kept[:, 0], "sigma1": kept[:, 0], "mu2": kept[:, 1], "sigma2": kept[:, 1], "rho12": pair}
    study_pos = np.cumsum(study) - 1
    fixed: dict[str, FixedDesign] = {}
    for dpar in ("mu1", "mu2", "sigma1", "sigma2", "rho12"):
        rows = applies[dpar]
        if not rows.any():
            if dpar == "rho12":
                m, terms, spec = np.zeros((0, 0)), (), None
            else:
                raise DataError(f"No study keeps response `{responses[int(dpar[-1]) - 1]}`; the {dpar} formula has no rows.")
        else:
            m, terms, spec = _materialize(formula.dpars[dpar], frame.loc[rows], dpar, texts[dpar], context)
            if dpar.startswith("sigma"):
                require_scale_coefficients(dpar, m.shape[1], texts[dpar])
            bad = np.flatnonzero(~np.all(np.isfinite(m), axis=1))
            if bad.size:
                raise DataError(
                    f"The {dpar} formula `{texts[dpar]}` gives non-finite values at row "
                    f"{labels[np.flatnonzero(rows)[bad[0]]]!r}."
                )
            check_full_rank(FixedDesign(dpar, terms, m, spec), texts[dpar])
        full = np.zeros((n, len(terms)))
        if rows.any():
            full[study_pos[rows]] = m
        fixed[dpar] = FixedDesign(dpar, terms, full, spec)

    kept_s = kept[study]
    pair_s = pair[study]
    v = _finalize_pair_v(meta_v.name if meta_v else None, v_kind, raw_matrix, blocks_all, off_block,
                         kept, study, labels, responses)
    n_decoupled = int((both & ~rho_ok).sum())
    study_weights = None
    if w_all is not None:
        study_weights = check_weights(w_all[study], labels[study], "studies")
        if not v.block_diagonal and np.any(study_weights != 1.0):
            raise DataError(
                f"weights: non-unit weights with meta_V(V = {v.name}) are not supported: V correlates "
                "different studies, so a study's log-likelihood is not separable; drop `weights=` or use "
                "a V that is block-diagonal by study."
            )
    return BivariateDesign(
        formula=formula,
        y=y_all[study],
        kept=kept_s,
        pair=pair_s,
        fixed=fixed,
        v=v,
        row_labels=labels[study],
        n_data=n_data,
        dropped=dropped,
        n_dropped_studies=int(n_data - n),
        dropped_labels=tuple(labels[~study]),
        n_decoupled=n_decoupled,
        columns=columns,
        weights=study_weights,
    )


def _study_weights(weights: Any, frame: pd.DataFrame, n_data: int) -> np.ndarray | None:
    """One float weight per data row (NaN where missing), or None without weights."""
    if weights is None:
        return None
    if isinstance(weights, str):
        col = frame[weights]
        if not frames.is_numeric(col):
            raise DataError(f"weights: column `{weights}` must be numeric.")
        w = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError("weights must be numeric (one value per study).") from exc
        if len(w) != n_data:
            raise DataError(f"weights: expected {n_data} values (one per study, a data row), got {len(w)}.")
    return np.where(np.isinf(w), np.nan, w)


def _finalize_pair_v(name, kind, matrix, blocks_all, off_block, kept, study, labels, responses) -> PairV:
    if matrix is None:
        return PairV(None, "none", blocks=np.zeros((int(study.sum()), 2, 2)))
    kept_entry = kept.reshape(-1)
    live = off_block[kept_entry[off_block[:, 0]] & kept_entry[off_block[:, 1]]] if len(off_block) else off_block
    if len(live):
        # V correlates different studies: validate and keep it whole over the kept entries.
        positions = np.flatnonzero(kept_entry)
        entry_labels = pd.Index([_entry_label(labels, e, responses) for e in positions])
        known = finalize_v(RawV(name, "env", matrix=matrix), positions, entry_labels)
        return PairV(name, kind, known=known)
    b = blocks_all[study].copy()
    k = kept[study]
    pos = np.flatnonzero(study)
    b[:, 0, 0] = np.where(k[:, 0], b[:, 0, 0], 0.0)
    b[:, 1, 1] = np.where(k[:, 1], b[:, 1, 1], 0.0)
    both = k.all(axis=1)
    for r, c in ((0, 1), (1, 0)):
        b[:, r, c] = np.where(both, b[:, r, c], 0.0)
    bad = np.flatnonzero(both & ~np.isfinite(b[:, 0, 1] + b[:, 1, 0]))
    if bad.size:
        raise CovarianceError(f"meta_V(V = {name}): the covariance of row {labels[pos[bad[0]]]!r} is missing or non-finite.")
    for kk in range(2):
        neg = np.flatnonzero(b[:, kk, kk] < 0)
        if neg.size:
            raise CovarianceError(
                f"meta_V(V = {name}): sampling variances must be >= 0; "
                f"{_entry_label(labels, 2 * pos[neg[0]] + kk, responses)} has {b[neg[0], kk, kk]:g}."
            )
    scale = np.maximum(np.abs(b).max(axis=(1, 2)), np.finfo(float).tiny)
    asym = np.flatnonzero(np.abs(b[:, 0, 1] - b[:, 1, 0]) > np.sqrt(_EPS) * scale)
    if asym.size:
        i = asym[0]
        raise CovarianceError(
            f"meta_V(V = {name}): V is not symmetric at row {labels[pos[i]]!r} "
            f"({b[i, 0, 1]:g} vs {b[i, 1, 0]:g})."
        )
    off = 0.5 * (b[:, 0, 1] + b[:, 1, 0])
    b[:, 0, 1] = b[:, 1, 0] = off
    det = b[:, 0, 0] * b[:, 1, 1] - off**2
    tol = 1e3 * _EPS * np.maximum(b[:, 0, 0] * b[:, 1, 1], off**2)
    indefinite = np.flatnonzero(det < -tol)
    if indefinite.size:
        i = indefinite[0]
        raise CovarianceError(
            f"meta_V(V = {name}): the 2 x 2 block of row {labels[pos[i]]!r} is not positive semidefinite "
            f"(v1={b[i, 0, 0]:g}, v2={b[i, 1, 1]:g}, cov12={off[i]:g})."
        )
    return PairV(name, kind, blocks=b)
