"""Model spec: formulas + data -> numeric arrays with row bookkeeping.

``build_design`` is the only place where user data are coerced.  It decides which rows
are retained (complete cases over every variable the formulas use, then rows whose
vector V is non-finite), materialises every fixed-effect design with formulaic on the
retained rows, and subsets V by rows and columns together.  The result, a frozen
:class:`ModelDesign`, holds float64 numpy arrays, formulaic's fitted ModelSpecs (for
prediction on new data) and the counts of dropped rows by reason.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import frames
from . import rows as drop_rules
from ..errors import DataError, FormulaError, RandomEffectsError
from .formula import Formula, RandomTerm
from .known_v import KnownV, RawV, finalize_v, require_common_effect_covariance, resolve_v

__all__ = ["ModelDesign", "FixedDesign", "RandomDesign", "build_design", "term_name"]


def term_name(column: str) -> str:
    """drmTMB-style term name of a formulaic column (``Intercept`` -> ``(Intercept)``)."""
    return "(Intercept)" if column == "Intercept" else column


# A phylo() term with more species than this keeps its tree and no dense K: the likelihood
# walks the tree in linear time (drmpy.phylo); a dense K of 1,000 species is 8 MB and its
# Cholesky check a few tens of milliseconds, so below this the dense K is built as before.
DENSE_PHYLO_MAX_LEVELS = 1000
# the largest dense K a later stage may ask for (``RandomDesign.relatedness``): 800 MB
DENSE_PHYLO_LIMIT = 10000

@dataclass(frozen=True)
class FixedDesign:
    """The fixed-effect design of one distributional parameter (rows: retained rows or levels)."""

    dpar: str
    terms: tuple[str, ...]
    matrix: np.ndarray = field(repr=False)
    model_spec: Any = field(repr=False)

    @property
    def names(self) -> list[str]:
        return [f"{self.dpar}:{t}" for t in self.terms]


@dataclass(frozen=True)
class RandomDesign:
    """One random-effect term on the retained rows.

    ``level_index[i]`` is the level of row i; ``z[i]`` its random-effect covariates
    (1 for an intercept, the slope values); ``sd_designs`` one per-level design per
    coefficient's SD; ``relmat`` the relatedness matrix among the observed levels.
    """

    term: RandomTerm
    levels: tuple[str, ...]
    level_index: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)
    sd_designs: tuple[FixedDesign, ...]
    relmat: np.ndarray | None = field(default=None, repr=False)
    level_counts: np.ndarray | None = field(default=None, repr=False)
    # phylo() terms: the parsed tree (Bio.Phylo).  Their dense K is built here only below
    # DENSE_PHYLO_MAX_LEVELS levels; above, ``relatedness()`` builds it when a later stage
    # asks, and the likelihood walks the tree (drmpy.phylo) without it.
    tree: Any = field(default=None, repr=False, compare=False)

    @property
    def is_relmat(self) -> bool:
        """A term with a known relatedness matrix (``relmat()`` or ``phylo()``): ``G = tau^2 K``."""
        return self.relmat is not None or self.tree is not None

    def relatedness_diagonal(self) -> np.ndarray:
        """The diagonal of K (level order) without forming K: ones for a phylo() term's
        correlation matrix."""
        if self.relmat is not None:
            return np.diag(self.relmat)
        return np.ones(self.n_levels)

    def relatedness(self) -> np.ndarray:
        """K among the observed levels (level order), dense: ``relmat`` or the tree's
        correlation matrix (O(levels^2) memory)."""
        if self.relmat is not None:
            return self.relmat
        if self.tree is None:
            raise RandomEffectsError(f"`{self.term.text}` has no relatedness matrix.")
        if self.n_levels > DENSE_PHYLO_LIMIT:
            raise RandomEffectsError(
                f"`{self.term.text}`: this step needs the dense {self.n_levels} x {self.n_levels} "
                f"phylogenetic correlation matrix; it is built for at most {DENSE_PHYLO_LIMIT:,} species.")
        from ..effects.phylogeny import phylo_corr  # a later stage, imported when needed

        return phylo_corr(self.tree, species=self.levels).to_numpy()

    @property
    def group(self) -> str:
        return self.term.group

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def n_coef(self) -> int:
        return self.z.shape[1]

    @property
    def n_cor(self) -> int:
        q = self.n_coef
        return q * (q - 1) // 2 if self.term.correlated else 0


@dataclass(frozen=True)
class ModelDesign:
    formula: Formula
    y: np.ndarray = field(repr=False)
    fixed: Mapping[str, FixedDesign] = field(repr=False)  # "mu", "sigma", then a family's ("nu", ...)
    random: tuple[RandomDesign, ...]
    known_v: KnownV
    weights: np.ndarray | None = field(repr=False)
    row_labels: pd.Index = field(repr=False)
    n_data: int
    dropped: Mapping[str, int]
    dropped_labels: tuple = field(repr=False)
    columns: tuple[str, ...] = ()  # every data column the model read (formulas, groups, V, weights)
    row_positions: np.ndarray | None = field(default=None, repr=False)  # positions of the retained rows in the data
    # the retained rows of those columns, as read (index = row_labels): what plots and
    # marginal means need to know about the data (factor shares, covariate means, moderator levels)
    frame: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def nobs(self) -> int:
        return len(self.y)

    @property
    def n_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    @property
    def common_effect(self) -> bool:
        """True for ``sigma ~ 0``: no residual heterogeneity, sigma fixed at 0."""
        return self.fixed["sigma"].matrix.shape[1] == 0

    @property
    def designs(self) -> list[FixedDesign]:
        """Every coefficient block in parameter order: mu, sigma, then each sd(...) design."""
        out = list(self.fixed.values())  # mu, sigma, then a family's parameters (nu, ...)
        for r in self.random:
            out.extend(r.sd_designs)
        return out


def _required_variables(rhs: str, dpar: str, text: str) -> frozenset[str]:
    try:
        return _required_variables_of(rhs)
    except Exception as exc:  # formulaic raises several types for syntax errors
        raise FormulaError(f"Cannot parse the {dpar} formula `{text}`: {exc}") from exc


def formulaic_module():
    """The formulaic module; its first import (with scipy.sparse and narwhals, some 0.4 s)
    runs with the cyclic collector paused (:func:`drmpy._startup.long_lived_imports`), not
    frozen: it happens at the first fit, when the user's objects exist too."""
    import sys

    module = sys.modules.get("formulaic")
    if module is None:
        from .._startup import long_lived_imports

        with long_lived_imports(freeze=False):
            import formulaic as module
    return module


@functools.lru_cache(maxsize=256)
def _required_variables_of(rhs: str) -> frozenset[str]:
    formulaic = formulaic_module()
    return frozenset(formulaic.Formula(rhs).required_variables)


_MATRIX_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_MATRIX_CACHE_SIZE = 32


def clear_matrix_cache() -> None:
    """Forget the cached formulaic design matrices (see :func:`_materialize`)."""
    _MATRIX_CACHE.clear()


def _materialize(rhs: str, frame: pd.DataFrame, dpar: str, text: str, context: Mapping[str, Any]):
    """formulaic's design of ``rhs`` on ``frame``; re-used when the same formula meets the
    same values (refits with a new response or V skip formula handling)."""
    import hashlib

    from .fingerprint import hash_array, hash_column

    variables = _required_variables(rhs, dpar, text)
    key = None
    if variables <= set(frame.columns):
        h = hashlib.blake2b(digest_size=16)
        for v in sorted(variables):
            h.update(v.encode())
            hash_column(h, frame[v])
        hash_array(h, np.asarray(frame.index))
        key = (rhs, h.hexdigest())
        hit = _MATRIX_CACHE.get(key)
        if hit is not None:
            _MATRIX_CACHE.move_to_end(key)
            return hit
    out = materialize_uncached(rhs, frame, dpar, text, context)
    if key is not None:
        _MATRIX_CACHE[key] = out
        while len(_MATRIX_CACHE) > _MATRIX_CACHE_SIZE:
            _MATRIX_CACHE.popitem(last=False)
    return out


def materialize_uncached(rhs: str, frame: pd.DataFrame, dpar: str, text: str, context: Mapping[str, Any]):
    formulaic = formulaic_module()
    try:
        mm = formulaic.model_matrix(rhs, frame, na_action="ignore", context=dict(context))
    except Exception as exc:
        raise FormulaError(f"Cannot build the design of `{text}`: {exc}") from exc
    values = np.asarray(mm, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    terms = tuple(term_name(str(c)) for c in mm.columns)
    return values, terms, mm.model_spec


def require_scale_coefficients(dpar: str, n_columns: int, text: str,
                               fix: str = "a model without this variance component is not supported") -> None:
    """An SD formula must have coefficients: without any, its log-SD would be 0 (SD 1), not
    an SD of 0.  (The univariate ``sigma ~ 0``, the common-effect model, is handled by
    :func:`require_common_effect_variance` instead.)"""
    if n_columns == 0:
        raise FormulaError(
            f"The {dpar} formula `{text}` has no coefficients. An SD formula needs at least one "
            f"(drop `0`/`-1` to keep the intercept); {fix}."
        )


def require_common_effect_variance(text: str, has_v: bool) -> None:
    """``sigma ~ 0`` (no residual heterogeneity: sigma fixed at 0) needs known sampling
    variances; without them some responses would have no variance at all."""
    if not has_v:
        raise FormulaError(
            f"The sigma formula `{text}` has no coefficients: sigma ~ 0 is the common-effect model "
            "(sigma fixed at 0), which needs known sampling variances through meta_V(V = ...) in the mu "
            "formula; without them the model has no row-level variance. Keep `sigma ~ 1`."
        )


def check_full_rank(design: FixedDesign, text: str) -> None:
    m = design.matrix
    if m.shape[1] == 0:
        return
    if m.shape[0] < m.shape[1]:
        raise DataError(
            f"The {design.dpar} formula `{text}` has {m.shape[1]} coefficients but only "
            f"{m.shape[0]} rows remain."
        )
    rank = np.linalg.matrix_rank(m)
    if rank < m.shape[1]:
        # Name the first column that is a combination of the ones before it.
        for j in range(1, m.shape[1] + 1):
            if np.linalg.matrix_rank(m[:, :j]) < j:
                raise DataError(
                    f"The {design.dpar} design of `{text}` is rank-deficient: column "
                    f"`{design.terms[j - 1]}` is a linear combination of earlier columns "
                    "(or constant zero) among the retained rows."
                )


def response_values(frame: pd.DataFrame, lhs: str, context: Mapping[str, Any]) -> np.ndarray:
    if lhs in frame.columns:
        col = frame[lhs]
        if not frames.is_numeric(col):
            raise DataError(f"The response `{lhs}` must be numeric, but has dtype {col.dtype}.")
        return np.asarray(col, dtype=np.float64)
    formulaic = formulaic_module()
    try:
        mm = formulaic.model_matrix(f"{lhs} ~ 1", frame, na_action="ignore", context=dict(context))
    except Exception as exc:
        raise FormulaError(f"Cannot evaluate the response `{lhs}`: {exc}") from exc
    lhs_m = np.asarray(mm.lhs, dtype=np.float64)
    if lhs_m.ndim == 2 and lhs_m.shape[1] != 1:
        raise DataError(f"The response `{lhs}` must be one numeric column, not {lhs_m.shape[1]}.")
    return lhs_m.reshape(-1)


def level_label(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def group_keys(frame: pd.DataFrame, term: RandomTerm) -> tuple[np.ndarray, tuple[str, ...]]:
    """Level label of every row and the ordered levels of a (possibly interacted) group.

    Levels follow the categorical order for a categorical column, numeric order for
    numeric ids, and sorted (code-point) order otherwise.
    """
    per_column = []
    for c in term.group_columns:
        col = frame[c]
        values = col.to_numpy()
        if isinstance(col.dtype, pd.CategoricalDtype):
            rank = {str(cat): i for i, cat in enumerate(col.cat.categories)}
            labels = np.array([str(v) for v in values], dtype=object)
            order_key: list[int] | np.ndarray = [rank[l] for l in labels]
        elif frames.is_numeric(col):
            labels = np.array([level_label(v) for v in values], dtype=object)
            order_key = values.astype(np.float64)
        else:
            labels = np.array([str(v) for v in values], dtype=object)
            order_key = labels
        per_column.append((labels, order_key))
    if len(per_column) == 1:
        keys = per_column[0][0]
    else:
        keys = np.array([":".join(t) for t in zip(*(p[0] for p in per_column))], dtype=object)
    first: dict[str, tuple] = {}
    for i, k in enumerate(keys):
        if k not in first:
            first[k] = tuple(p[1][i] for p in per_column)
    levels = tuple(sorted(first, key=lambda k: first[k]))
    return keys, levels


def _lookup(name: str, env: Mapping[str, Any] | None, namespace: Mapping[str, Any], what: str) -> Any:
    if env is not None and name in env:
        return env[name]
    if name in namespace:
        return namespace[name]
    raise RandomEffectsError(
        f"{what}: `{name}` is not a key of `env=` or a variable in the namespace where the "
        "Formula was built."
    )


def _phylo_tree(term: RandomTerm, env, namespace, what: str):
    """The parsed tree (Bio.Phylo) of ``phylo(1 | species, tree = name)``."""
    name = term.relmat
    assert name is not None  # a phylo() term always names its tree
    if name[0] in "'\"":  # a quoted literal: Newick text or a file path
        tree = name[1:-1]
    else:
        tree = _lookup(name, env, namespace, what)
    from ..effects.phylogeny import read_tree  # a later stage, imported when a phylo() term is used

    try:
        return read_tree(tree)
    except DataError as exc:
        raise RandomEffectsError(f"{what}: {exc}") from exc


def _phylo_relatedness(tree, what: str) -> pd.DataFrame:
    """K of ``phylo(1 | species, tree = name)``: the tree's Brownian-motion correlation matrix."""
    from ..effects.phylogeny import phylo_corr  # a later stage, imported when a phylo() term is used

    try:
        return phylo_corr(tree)
    except DataError as exc:
        raise RandomEffectsError(f"{what}: {exc}") from exc


def _relatedness(term: RandomTerm, levels: tuple[str, ...], env, namespace, tree=None) -> np.ndarray:
    what = f"`{term.text}`"
    if term.relmat_kind == "tree":
        K = _phylo_relatedness(tree, what)
    else:
        assert term.relmat is not None  # relmat_kind is set only with relmat
        K = _lookup(term.relmat, env, namespace, what)
    if isinstance(K, pd.DataFrame):
        rows = [str(i) for i in K.index]
        cols = [str(c) for c in K.columns]
        if rows != cols:
            raise RandomEffectsError(f"{what}: K's index and columns must hold the same level labels in the same order.")
        mat = K.to_numpy(dtype=np.float64)
    else:
        mat = np.asarray(K, dtype=np.float64)
        if term.relmat_levels is None:
            raise RandomEffectsError(
                f"{what}: K is a plain array; give it as a pandas DataFrame whose index and "
                "columns are the level labels, or name the labels of its rows with "
                f"`relmat(1|{term.group}, K={term.relmat}, levels=<name>)`."
            )
        rows = [str(x) for x in _lookup(term.relmat_levels, env, namespace, what)]
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] != len(rows):
        raise RandomEffectsError(f"{what}: K must be square with one row per level label, got shape {mat.shape}.")
    position = {lab: i for i, lab in enumerate(rows)}
    missing = [lv for lv in levels if lv not in position]
    if missing:
        raise RandomEffectsError(
            f"{what}: level `{missing[0]}` of `{term.group}` is not in K ({len(missing)} observed "
            "level(s) missing); K must cover every observed level."
        )
    idx = np.array([position[lv] for lv in levels])
    sub = mat[np.ix_(idx, idx)]
    if not np.all(np.isfinite(sub)):
        raise RandomEffectsError(f"{what}: K has non-finite entries.")
    if np.max(np.abs(sub - sub.T)) > np.sqrt(np.finfo(float).eps) * max(np.max(np.abs(sub)), 1e-300):
        raise RandomEffectsError(f"{what}: K is not symmetric.")
    try:
        np.linalg.cholesky(0.5 * (sub + sub.T))
    except np.linalg.LinAlgError as exc:
        raise RandomEffectsError(f"{what}: K is not positive definite over the observed levels.") from exc
    return 0.5 * (sub + sub.T)


def formula_context(formula: Formula, data: Any, env: Mapping[str, Any] | None):
    """(data columns, formula texts, the Formula's namespace, the lookup context: namespace
    overlaid by ``env``), after checking that there are data."""
    if data is None:
        raise DataError("`data` is required.")
    context: dict[str, Any] = dict(formula.env)
    if env:
        context.update(env)
    return frames.column_names(data), formula.text, formula.env, context


def response_columns(response: str, dpar: str, text: str, all_columns, context) -> list[str]:
    """Data columns a response reads: the column itself, or the variables of an expression."""
    if response in all_columns:
        return [response]
    used = _required_variables(f"{response} ~ 1", dpar, text)
    unknown = sorted(used - set(all_columns) - set(context))
    if unknown:
        raise DataError(f"The response `{response}` uses `{unknown[0]}`, which is not a column of the data.")
    return sorted(used & set(all_columns))


def formula_columns(dpar: str, rhs: str, text: str, all_columns, context) -> list[str]:
    """Data columns the right-hand side ``rhs`` of a dpar's formula reads; a variable that is
    neither a column nor in the formula's namespace is an error naming the formula."""
    used = _required_variables(rhs, dpar, text)
    missing = sorted(v for v in used if v not in all_columns and v not in context)
    if missing:
        raise DataError(f"Column `{missing[0]}` used in the {dpar} formula `{text}` is not in the data.")
    return sorted(v for v in used if v in all_columns)


def check_weights(w: np.ndarray, labels: pd.Index, unit: str) -> np.ndarray:
    """``w`` (one weight per retained row or study, labelled ``labels``) after checking that
    every weight is >= 0 and some weight is > 0."""
    neg = np.flatnonzero(w < 0)
    if neg.size:
        raise DataError(f"weights must be >= 0; row {labels[neg[0]]!r} has {w[neg[0]]:g}.")
    if not np.any(w > 0):
        raise DataError(f"weights are all zero among the retained {unit}; nothing to fit.")
    return w


def build_design(
    formula: Formula,
    data: Any,
    *,
    weights: Any = None,
    env: Mapping[str, Any] | None = None,
) -> ModelDesign:
    """Resolve every formula against ``data`` and return the numeric model spec."""
    all_columns, texts, namespace, context = formula_context(formula, data, env)

    # ---- which columns every formula needs
    response = formula.response
    needed = response_columns(response, "mu", texts["mu"], all_columns, context)
    for dpar, rhs in formula.dpars.items():
        needed.extend(formula_columns(dpar, rhs, texts[dpar], all_columns, context))
    for term in formula.random_terms:
        for c in term.group_columns + term.slopes:
            if c not in all_columns:
                raise RandomEffectsError(f"Column `{c}` of the random-effect term `{term.text}` is not in the data.")
            needed.append(c)
    if isinstance(weights, str):
        if weights not in all_columns:
            raise DataError(f"weights: column `{weights}` is not in the data.")
        needed.append(weights)
    meta_v = formula.meta_v
    v_col = meta_v.name if meta_v is not None and meta_v.name in all_columns else None
    columns = tuple(dict.fromkeys(needed + ([v_col] if v_col else [])))
    frame = frames.as_pandas(data, columns)
    n_data = len(frame)
    labels = frame.index

    if meta_v is not None:
        raw_v: RawV | None = resolve_v(meta_v.name, all_columns, lambda c: frame[c], env, namespace, n_data)
    else:
        raw_v = None

    # ---- rows: complete cases, then non-finite numeric values, then a vector V (model/rows.py)
    used_cols = list(dict.fromkeys(needed))
    for term in formula.random_terms:
        for c in term.group_columns:
            if not frame[c].notna().any():
                raise RandomEffectsError(f"Grouping column `{c}` of `{term.text}` is entirely missing.")
    v_name = raw_v.name if raw_v is not None else None
    reason = drop_rules.row_reasons(frame, used_cols, raw_v.vector if raw_v is not None else None)
    if isinstance(weights, str):
        w_all = frame[weights]
        if not frames.is_numeric(w_all):
            raise DataError(f"weights: column `{weights}` must be numeric.")
        w_all = w_all.to_numpy(dtype=np.float64, na_value=np.nan)
    elif weights is not None:
        w_all = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(w_all) != n_data:
            raise DataError(f"weights: expected {n_data} values (one per data row), got {len(w_all)}.")
        drop_rules.mark(reason, ~np.isfinite(w_all), drop_rules.MISSING_WEIGHT)
    else:
        w_all = None

    # transformed predictors (np.log(x) of x <= 0) may produce non-finite values: evaluate on
    # the complete cases, then drop those rows too and count them.
    keep = reason == drop_rules.KEPT
    sub = frame.loc[keep]
    y = response_values(sub, response, context)
    mats: dict[str, tuple] = {}
    for dpar, rhs in formula.dpars.items():
        mats[dpar] = _materialize(rhs, sub, dpar, texts[dpar], context)
        if dpar == "sigma" and mats[dpar][0].shape[1] == 0:
            require_common_effect_variance(texts[dpar], meta_v is not None)
        elif dpar.startswith("sd("):
            require_scale_coefficients(dpar, mats[dpar][0].shape[1], texts[dpar],
                                       fix="to fit a model without this SD, drop its random-effect term")
        elif dpar != "mu" and mats[dpar][0].shape[1] == 0:
            raise FormulaError(f"The {dpar} formula `{texts[dpar]}` has no coefficients; give at least "
                               f"an intercept (`{dpar} ~ 1`), or fix the parameter in the family.")
    ok = np.isfinite(y)
    for dpar, (m, _, _) in mats.items():
        ok &= np.all(np.isfinite(m), axis=1)
    if not ok.all():
        keep_pos = np.flatnonzero(keep)
        reason[keep_pos[~ok]] = drop_rules.TRANSFORMED
        keep[keep_pos[~ok]] = False
        sub = frame.loc[keep]
        y = y[ok]
        mats = {d: (m[ok], t, s) for d, (m, t, s) in mats.items()}
    dropped = drop_rules.dropped_counts(reason, v_name)

    n = int(keep.sum())
    if n == 0:
        raise DataError(drop_rules.no_rows_message(n_data, dropped))
    kept_labels = labels[keep]
    dropped_labels = tuple(labels[~keep])

    weights_arr = None if w_all is None else check_weights(w_all[keep], kept_labels, "rows")

    # mu, sigma and a family's parameters (nu, ...): one design per row; sd(g): one per level
    fixed = {
        dpar: FixedDesign(dpar, terms, m, spec)
        for dpar, (m, terms, spec) in mats.items()
        if not dpar.startswith("sd(")
    }
    for dpar in fixed:
        check_full_rank(fixed[dpar], texts[dpar])
    known_v = finalize_v(raw_v, np.flatnonzero(keep), kept_labels)
    if weights_arr is not None and not known_v.is_diagonal and np.any(weights_arr != 1.0):
        raise DataError(
            "weights: non-unit weights with a non-diagonal V are not supported (a row's "
            "log-likelihood is not separable when V correlates rows); drop `weights=` or use a "
            "diagonal V."
        )

    random = tuple(
        _random_design(term, sub, mats, formula, env, namespace, kept_labels)
        for term in formula.random_terms
    )
    if fixed["sigma"].matrix.shape[1] == 0:  # sigma ~ 0: V and the random effects must carry S
        require_common_effect_covariance(known_v, random, kept_labels)
    if random and weights_arr is not None and np.any(weights_arr != 1.0):
        raise DataError(
            "weights: non-unit weights with random effects are not supported (rows sharing a "
            "random effect have no separate log-likelihoods)."
        )
    return ModelDesign(
        formula=formula,
        y=y,
        fixed=fixed,
        random=random,
        known_v=known_v,
        weights=weights_arr,
        row_labels=kept_labels,
        n_data=n_data,
        dropped=dropped,
        dropped_labels=dropped_labels,
        columns=columns,
        row_positions=np.flatnonzero(keep),
        frame=sub,
    )


def one_level_message(term: RandomTerm, level: Any, where: str = "among the retained rows") -> str:
    """Why a random term whose factor has the single level ``level`` is refused."""
    return (f"`{term.text}`: `{term.group}` has a single level ({level!r}) {where}, so the random "
            f"effect is one draw whose SD cannot be estimated (it is confounded with the mu "
            f"coefficients); drop the term (metafor's rma.mv fixes such a variance at 0), or fit data "
            f"with several levels of `{term.group}`.")


def _require_several_levels(term: RandomTerm, levels: tuple) -> None:
    """A random term needs at least two levels of its factor among the retained rows."""
    if len(levels) == 1:
        raise RandomEffectsError(one_level_message(term, levels[0]))


def _random_design(term: RandomTerm, sub: pd.DataFrame, mats: Mapping[str, tuple],
                   formula: Formula, env, namespace, kept_labels) -> RandomDesign:
    keys, levels = group_keys(sub, term)
    position = {lv: i for i, lv in enumerate(levels)}
    level_index = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))
    counts = np.bincount(level_index, minlength=len(levels))
    _require_several_levels(term, levels)
    cols = []
    if term.intercept:
        cols.append(np.ones(len(sub)))
    for s in term.slopes:
        col = sub[s]
        if not frames.is_numeric(col):
            raise RandomEffectsError(
                f"Random slope `{s}` in `{term.text}` must be a numeric column, but has dtype {col.dtype}."
            )
        cols.append(col.to_numpy(dtype=np.float64))
    z = np.column_stack(cols)
    common_effect = mats["sigma"][0].shape[1] == 0  # no sigma: nothing to confound sd(g) with
    if (term.intercept and len(term.slopes) == 0 and term.relmat is None and np.all(counts <= 1)
            and not common_effect):
        if ":" in term.group:
            raise RandomEffectsError(
                f"`{term.text}`: every level of `{term.group}` has a single row, so its SD is the "
                "row-level `sigma` and cannot be separated from it; drop this level of the nested "
                f"term (metafor's `~ 1 | {term.group.replace(':', '/')}` with one effect size per "
                f"`{term.group_columns[-1]}` is drmpy's `(1|{':'.join(term.group_columns[:-1])})` plus sigma)."
            )
        raise RandomEffectsError(
            f"`{term.text}`: every level of `{term.group}` has a single row, so sd({term.group}) is "
            "confounded with the row-level sigma; drop the term (sigma already models row-level "
            "heterogeneity)."
        )
    first_row = np.full(len(levels), -1, dtype=np.int64)
    present, first_of = np.unique(level_index, return_index=True)  # the first row of each level
    first_row[present] = first_of
    sd_designs = []
    for dpar in term.sd_dpars():
        m, terms, spec = mats[dpar]
        per_level = m[first_row]
        diff = np.any(np.abs(m - per_level[level_index]) > 1e-12 * (1 + np.abs(m)), axis=1)
        if diff.any():
            bad = levels[level_index[np.flatnonzero(diff)[0]]]
            raise RandomEffectsError(
                f"The predictors of `{formula.text[dpar]}` must be constant within each level of "
                f"`{term.group}`, but level `{bad}` has rows with different values."
            )
        design = FixedDesign(dpar, terms, per_level, spec)
        check_full_rank(design, formula.text[dpar])
        sd_designs.append(design)
    tree = None
    if term.relmat_kind == "tree" and len(levels) > DENSE_PHYLO_MAX_LEVELS:
        tree = _phylo_tree(term, env, namespace, f"`{term.text}`")
        from ..effects.phylogeny import tip_labels

        tips = set(tip_labels(tree))
        missing = [lv for lv in levels if lv not in tips]
        if missing:
            raise RandomEffectsError(
                f"`{term.text}`: level `{missing[0]}` of `{term.group}` is not a tip of the tree "
                f"({len(missing)} observed level(s) missing); the tree must cover every observed level.")
        relmat = None
    else:
        if term.relmat_kind == "tree":
            tree = _phylo_tree(term, env, namespace, f"`{term.text}`")
        relmat = _relatedness(term, levels, env, namespace, tree) if term.relmat else None
    return RandomDesign(term, levels, level_index, z, tuple(sd_designs), relmat, counts, tree)
