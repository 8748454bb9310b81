"""Forest plot (metafor's ``forest()``): effect sizes with weights and text columns, pooled diamonds.

The table (:func:`forest_table`) holds every number and string the figure shows; the drawing
(:func:`forest`) only places them.  Rows, top to bottom: a heading per level of ``mod``
(with its k), that level's effect sizes, the level's pooled mean; then the overall pooled
mean and a line of heterogeneity statistics (metafor's ``mlab``).  Long tables are split
into pages of at most ``max_rows`` rows, or aggregated to one row per cluster
(``aggregate=``, e.g. one row per study of a multilevel model).
"""

from __future__ import annotations

import string
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError, DrmWarning
from ._common import (TransformArg, column_of, effect_label, effect_sizes_table, is_factor,
                      marker_areas, new_axes, require_univariate, resolve_transform, table_settings,
                      tag_table)
from .orchard import orchard_table

__all__ = ["forest_table", "forest"]

TABLE_COLUMNS = ["kind", "level", "label", "estimate", "conf_low", "conf_high", "pred_low",
                 "pred_high", "weight", "size_value", "k", "estimate_text", "weight_text",
                 "position", "page"]
KINDS = ("heading", "effect", "pooled", "overall", "note")


def _settings(table: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The settings :func:`forest_table` kept with the table (``_common.table_settings``), after
    checking the table has what a forest needs and agrees with the settings passed."""
    settings = table_settings(table, "forest", columns=TABLE_COLUMNS, given=given)
    unknown = sorted(set(table["kind"]) - set(KINDS))
    if unknown:
        raise DrmError(f"forest(): unknown row kind(s) {unknown} in column `kind`; expected {list(KINDS)}.")
    return settings


# ------------------------------------------------------------------ pieces of the table
def _labels(fit: Any, label: str | None, data: Any) -> np.ndarray:
    """Row labels: the data's row labels, a column, or a format such as ``"{author} ({year})"``."""
    if label is None:
        return np.asarray([str(v) for v in fit.design.row_labels], dtype=object)
    fields = [f for _, f, _, _ in string.Formatter().parse(label) if f]
    if not fields:
        return column_of(fit, label, data).astype(str).to_numpy(dtype=object)
    columns = {f: column_of(fit, f, data).to_numpy() for f in dict.fromkeys(fields)}
    try:
        return np.asarray([label.format(**{f: v[i] for f, v in columns.items()})
                           for i in range(fit.nobs)], dtype=object)
    except (ValueError, TypeError) as exc:
        raise DrmError(f"forest: label format {label!r} cannot format the columns {list(columns)}: {exc}") from exc


def _fmt(x: float, digits: int) -> str:
    """A number as metafor's forest prints it (``formatC(x, format = "f", digits)``)."""
    return "" if not np.isfinite(x) else f"{x:.{digits}f}"


def _estimate_text(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, digits: int) -> list[str]:
    return [f"{_fmt(e, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if np.isfinite(e) else ""
            for e, lo, hi in zip(estimate, low, high)]


def _p_text(p: float) -> str:
    return "p < .001" if p < 0.001 else f"p = {p:.3f}"


def heterogeneity_text(fit: Any, digits: int = 2) -> str:
    """metafor's ``mlab`` line: Q test, total I2 and the fitted variance components.

    ``Q = .., df = .., p ..`` is the test for (residual) heterogeneity (``fit.q_test()``; left
    out, and the line says so, for a fit with ``weights=``, where it is not defined),
    ``I²`` the total of ``fit.i2()``, then ``τ²`` (= sigma^2) for a model with only row-level
    heterogeneity, else ``σ²(group)`` per random-effect SD and ``σ²(residual)`` for sigma^2.
    A modelled variance (location-scale) is the mean over the rows, and says so.
    """
    from ..heterogeneity.statistics import row_variances
    from ..results.robust_fit import RobustFit

    if isinstance(fit, RobustFit):
        return robust_heterogeneity_text(fit, digits)
    residual = "residual heterogeneity: " if fit.design.fixed["mu"].matrix.shape[1] > 1 else ""
    common = "common-effect model: " if fit.design.common_effect and not fit.design.random else ""
    parts = []
    try:
        q = fit.q_test()
        parts.append(f"{common}{residual}Q = {q['Q']:.{digits}f}, df = {int(q['df'])}, {_p_text(q['p_value'])}")
        parts.append(f"I² = {fit.i2().loc['total', 'i2']:.1f}%")
    except DrmError:  # Q and I2 count every row once, which a fit with weights= does not
        parts.append(f"{common}Q and I² not shown (a fit with weights=)")
    # each component's fitted variance averaged over the rows (heterogeneity.variance_components)
    components = {k: float(np.mean(v)) for k, v in row_variances(fit).items()}
    names = []
    for name, value in components.items():
        modelled = (name == "sigma" and fit.design.fixed["sigma"].matrix.shape[1] > 1)
        if name == "sigma":
            symbol = "τ²" if len(components) == 1 else "σ²(residual)"
        else:
            symbol = f"σ²({name[3:-1]})" if name.startswith("sd(") and name.endswith(")") else f"{name}²"
            modelled = modelled or _sd_modelled(fit, name)
        names.append(f"{symbol} = {_variance_text(value, digits)}" + (" (mean over rows)" if modelled else ""))
    if names:
        parts.append(", ".join(names))
    return "; ".join(parts)


def robust_heterogeneity_text(fit: Any, digits: int = 2) -> str:
    """The heterogeneity line of a robust fit (no Q or I², which assume normal random effects):
    the family's parameters, each the mean over the rows when it has a formula.  ``student()``:
    ``σ²`` (the squared t scale, metaplus's tau2) and ``ν`` (``∞`` at the boundary, the normal
    model); ``normal_mixture()``: ``σ²``, ``σ²(outlier)`` and ``P(outlier)``; then ``σ²(g)``
    per Gaussian ``(1|g)`` effect."""
    family = fit.family

    def mean_of(dpar: str) -> float:
        return float(np.mean(fit.dpar_values(dpar).to_numpy(dtype=np.float64)))

    def modelled(dpar: str) -> str:
        fixed = fit.design.fixed.get(dpar)
        return " (mean over rows)" if fixed is not None and fixed.matrix.shape[1] > 1 else ""

    sigma2 = mean_of("sigma") ** 2 if not modelled("sigma") else float(np.mean(fit.dpar_values("sigma") ** 2))
    if family.name == "student":
        nu = mean_of("nu")
        nu_text = "∞ (normal)" if not np.isfinite(nu) else f"{nu:.{digits}f}"
        parts = [f"t random effects: σ² = {_variance_text(sigma2, digits)}{modelled('sigma')} (t scale²)",
                 f"ν = {nu_text}{modelled('nu')}"]
    else:
        out2 = float(np.mean(fit.dpar_values("sigma_out") ** 2))
        parts = [f"normal-mixture random effects: σ² = {_variance_text(sigma2, digits)}{modelled('sigma')}",
                 f"σ²(outlier) = {_variance_text(out2, digits)}{modelled('sigma_out')}",
                 f"P(outlier) = {mean_of('p_out'):.{digits}f}{modelled('p_out')}"]
    for rd in fit.design.random:
        sd = fit.sd(rd.group).to_numpy(dtype=np.float64)
        parts.append(f"σ²({rd.group}) = {_variance_text(float(np.mean(sd**2)), digits)}")
    return ", ".join(parts)


def _variance_text(value: float, digits: int) -> str:
    """``digits`` decimals, or two significant digits for a small positive variance that would
    print as 0 (one at the boundary, below 1e-6, prints as 0, as metafor's)."""
    if 1e-6 <= value < 0.5 * 10.0 ** -digits:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _sd_modelled(fit: Any, name: str) -> bool:
    """Whether an ``sd(g)`` has its own formula (its variance then differs by row)."""
    fixed = fit.design.fixed.get(name)
    return fixed is not None and fixed.matrix.shape[1] > 1


def _cluster_summary(fit: Any, rows: np.ndarray, sigma2: np.ndarray) -> tuple[float, float]:
    """One cluster's GLS mean and its standard error (model scale).

    With ``S_j = V_j + diag(sigma_i^2)`` the covariance of the cluster's effect sizes around
    the cluster's own mean (sampling error and row-level heterogeneity, the cluster's random
    effect excluded), the mean is ``1'S_j^-1 y_j / 1'S_j^-1 1`` with variance ``1 / 1'S_j^-1 1``.
    """
    kv = fit.design.known_v
    V = np.diag(kv.diag[rows]) if kv.is_diagonal else kv.matrix[np.ix_(rows, rows)]
    S = V + np.diag(sigma2[rows])
    one = np.ones(len(rows))
    s_inv_one = np.linalg.solve(S, one)
    precision = float(one @ s_inv_one)
    return float(s_inv_one @ fit.design.y[rows]) / precision, 1.0 / np.sqrt(precision)


def _without_row_weights(fit: Any) -> bool:
    """A robust fit with a ``(1|g)`` effect: its rows' weights in the estimate depend on the
    group effects, so the forest plot has no weight column and sizes squares by precision."""
    from ..results.robust_fit import RobustFit

    return isinstance(fit, RobustFit) and bool(fit.design.random)


def _effect_rows(fit: Any, *, label: str | None, mod: str | None, size_by: str, aggregate: str | None,
                 data: Any) -> pd.DataFrame:
    """Effect-size rows (model scale): one per row the fit used, or one per ``aggregate`` cluster."""
    from ..inference.marginal import gls_weights

    points = effect_sizes_table(fit, mod, size_by="precision" if size_by == "weight" else size_by, data=data)
    weight = np.full(fit.nobs, np.nan) if _without_row_weights(fit) else gls_weights(fit)
    out = pd.DataFrame({
        "level": points["level"].to_numpy(),
        "label": _labels(fit, label, data),
        "estimate": points["yi"].to_numpy(),
        "se": points["sei"].to_numpy(),
        "weight": weight,
        "size_value": weight if size_by == "weight" else points["size_value"].to_numpy(),
        "k": 1,
    })
    if aggregate is None:
        return out
    from ..heterogeneity.statistics import row_variances
    from ..results.robust_fit import RobustFit

    if isinstance(fit, RobustFit):
        raise DrmError(f"forest(aggregate={aggregate!r}): a cluster's mean is the GLS mean under normal random "
                       f"effects; a {fit.family!r} fit has no such closed form. Plot the rows (no aggregate=).")

    cluster = column_of(fit, aggregate, data).to_numpy()
    sigma2 = row_variances(fit).get("sigma", np.zeros(fit.nobs))
    rows = []
    for value, idx in pd.Series(np.arange(fit.nobs)).groupby(cluster, sort=False).indices.items():
        levels = pd.unique(out["level"].to_numpy()[idx])
        if len(levels) > 1:
            raise DrmError(f"forest(aggregate={aggregate!r}): cluster {value!r} has rows in several levels of "
                           f"`{mod}` ({', '.join(map(str, levels))}); aggregate by a column nested in `{mod}`.")
        mean, se = _cluster_summary(fit, np.asarray(idx), np.asarray(sigma2, dtype=np.float64))
        name = str(value) if label is None else out["label"].iloc[idx[0]]
        rows.append({"level": levels[0], "label": f"{name} (k = {len(idx)})" if len(idx) > 1 else name,
                     "estimate": mean, "se": se, "weight": float(out["weight"].iloc[idx].sum()),
                     "size_value": float(out["size_value"].iloc[idx].sum()) if size_by == "weight"
                     else 1.0 / se if size_by == "precision" else float(out["size_value"].iloc[idx].mean()),
                     "k": len(idx), "_first": int(idx[0])})
    return pd.DataFrame(rows)


def _sorted(effects: pd.DataFrame, sort: str | None, fit: Any, data: Any) -> pd.DataFrame:
    if sort is None:
        return effects
    if sort == "estimate":
        key = effects["estimate"].to_numpy()
    elif sort == "precision":
        key = effects["se"].to_numpy()
    elif sort == "weight":
        key = -effects["weight"].to_numpy()
    else:
        column = column_of(fit, sort, data).to_numpy()
        key = column[effects["_first"].to_numpy()] if "_first" in effects else column
    return effects.iloc[np.argsort(key, kind="stable")]


def _pages(kinds: list[str], slots: np.ndarray, max_rows: int | None) -> np.ndarray:
    """Page of each row: at most ``max_rows`` slots a page, a heading never last on its page."""
    if max_rows is None:
        return np.zeros(len(kinds), dtype=np.int64)
    if max_rows < 5:
        raise DrmError(f"forest: max_rows must be at least 5 (or None for one page), got {max_rows}.")
    page = np.zeros(len(kinds), dtype=np.int64)
    current, start = 0, slots[0] if len(slots) else 0
    for i, (kind, slot) in enumerate(zip(kinds, slots)):
        ends_page = slot - start >= max_rows or (kind == "heading" and slot - start >= max_rows - 1)
        if ends_page and kinds[i] != "note":  # the heterogeneity line stays under its diamond
            current, start = current + 1, slot
        page[i] = current
    return page


def forest_table(fit: Any, *, label: str | None = None, sort: str | None = None, mod: str | None = None,
                 level: float = 0.95, transform: TransformArg = None, size_by: str = "weight",
                 aggregate: str | None = None, group: str | None = None, test: str = "z",
                 vcov: str = "observed", digits: int = 2, max_rows: int | None = 60,
                 data: Any = None) -> pd.DataFrame:
    """Rows of a forest plot, top to bottom, with the numbers and strings the figure prints.

    ``kind``: ``"heading"`` (a level of ``mod``, with its k), ``"effect"`` (one effect size:
    ``estimate`` = y_i, interval ``y_i +- z sqrt(v_i)``, z the normal quantile of ``level``),
    ``"pooled"`` (the marginal mean of ``mu`` of a level of ``mod`` with its confidence and
    prediction interval, from :func:`orchard_table`), ``"overall"`` (the same over all rows,
    other predictors marginalised as orchaRd's ``weights = "prop"``) and ``"note"`` (the
    heterogeneity line, :func:`heterogeneity_text`, in ``label``).

    ``weight``: the row's percentage weight in the GLS estimate,
    :func:`drmpy.inference.marginal.gls_weights` (metafor's ``weights()``; sums to 100 over
    the effect rows); pooled rows carry their level's total, the overall row 100.
    ``estimate_text`` = ``"est [low, high]"`` and ``weight_text`` = ``"w%"`` with ``digits``
    decimals, as ``forest(res, showweights = TRUE)`` prints them.

    ``label``: None (the data's row labels), a column, or a format of columns such as
    ``"{author} ({year})"``.  ``sort``: None (data order), ``"estimate"``, ``"precision"``,
    ``"weight"`` (largest first) or a column, within each level.  ``size_by``: square area by
    ``"weight"`` (as metafor), ``"precision"`` or a column.  ``aggregate``: a column (e.g. the
    study of a multilevel model): one row per value, its GLS mean ``1'S_j^-1 y_j / 1'S_j^-1 1``
    with ``S_j = V_j + diag(sigma_i^2)`` (sampling error and row-level heterogeneity, the
    cluster's random effect left out), variance ``1 / 1'S_j^-1 1``, weight the sum of its rows'
    weights, ``k`` its number of rows.  Values (not weights) back-transformed by ``transform``.
    ``position`` counts down to the last row; ``page`` splits the rows into pages of at most
    ``max_rows`` (None: one page).  ``group``/``test``/``vcov``/``data`` as in
    :func:`orchard_table`.
    """
    require_univariate(fit, "forest_table")
    if size_by == "weight" and _without_row_weights(fit):
        size_by = "precision"
    if size_by not in ("weight", "precision") and is_factor(column_of(fit, size_by, data)):
        raise DrmError(f"size_by column `{size_by}` must be numeric.")
    tf = resolve_transform(transform)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    effects = _effect_rows(fit, label=label, mod=mod, size_by=size_by, aggregate=aggregate, data=data)
    effects["conf_low"] = effects["estimate"] - z * effects["se"]
    effects["conf_high"] = effects["estimate"] + z * effects["se"]
    effects = _sorted(effects, sort, fit, data)
    effects = effects.assign(kind="effect", pred_low=np.nan, pred_high=np.nan)

    blocks: list[pd.DataFrame] = []
    if mod is not None:
        pooled = orchard_table(fit, mod, level, group=group, test=test, vcov=vcov, data=data)
        if len(pooled) == 0:
            raise DrmError(f"forest: moderator `{mod}` has no levels among the retained rows.")
        for _, row in pooled.iterrows():
            block = effects[effects["level"] == row["level"]]
            heading = {"kind": "heading", "level": row["level"], "label": f"{row['level']} (k = {row['k']})",
                       "k": row["k"]}
            mean = {"kind": "pooled", "level": row["level"], "label": f"Mean of {row['level']}",
                    "weight": float(block["weight"].sum()), "k": row["k"],
                    **{c: row[c] for c in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high")}}
            blocks.extend([pd.DataFrame([heading]), block, pd.DataFrame([mean])])
    else:
        blocks.append(effects)
    overall = orchard_table(fit, None, level, group=group, test=test, vcov=vcov, data=data).iloc[0]
    blocks.append(pd.DataFrame([{
        "kind": "overall", "level": "overall", "label": "Overall mean" if mod is not None else "Pooled mean",
        "weight": np.nan if _without_row_weights(fit) else 100.0, "k": int(overall["k"]),
        **{c: overall[c] for c in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high")}}]))
    blocks.append(pd.DataFrame([{"kind": "note", "level": "overall", "label": heterogeneity_text(fit, digits),
                                 "k": int(overall["k"])}]))
    table = pd.concat(blocks, ignore_index=True).reindex(columns=TABLE_COLUMNS)
    for c in ("estimate", "conf_low", "conf_high", "pred_low", "pred_high"):
        table[c] = tf(table[c].to_numpy(dtype=np.float64))
    table["k"] = table["k"].astype("Int64")
    table["weight"] = table["weight"].astype(np.float64)
    table["size_value"] = table["size_value"].astype(np.float64)
    table["estimate_text"] = _estimate_text(table["estimate"].to_numpy(), table["conf_low"].to_numpy(),
                                            table["conf_high"].to_numpy(), digits)
    table["weight_text"] = [f"{_fmt(w, digits)}%" if np.isfinite(w) else "" for w in table["weight"]]

    # an empty slot after each level's mean and before the overall diamond (metafor's layout)
    kinds = list(table["kind"])
    gap_after = np.array([k == "pooled" for k in kinds[:-1]] + [False])
    gap_after |= np.r_[np.array([kinds[i + 1] == "overall" and kinds[i] == "effect"
                                 for i in range(len(kinds) - 1)]), False]
    slots = np.arange(len(table)) + np.r_[0, np.cumsum(gap_after)[:-1]]
    table["position"] = (slots.max() - slots).astype(np.float64)
    table["page"] = _pages(kinds, slots, max_rows)
    return tag_table(table, "forest", level=float(level), transform=transform, moderator=mod,
                     aggregate=aggregate, size_by=size_by, digits=int(digits), group=group, test=test,
                     vcov=vcov, response=fit.formula.response, reference=float(tf(np.zeros(1))[0]),
                     label_header=_label_header(label, aggregate))


def _label_header(label: str | None, aggregate: str | None) -> str:
    if aggregate is not None and label is None:
        return str(aggregate)[:1].upper() + str(aggregate)[1:]
    if label is None or "{" in label:
        return "Study"
    return str(label)[:1].upper() + str(label)[1:]


# ------------------------------------------------------------------ drawing
def _text_width(text: str, size: float, weight: str = "normal") -> float:
    """Width of ``text`` in points (backend independent)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    if not text:
        return 0.0
    width, _, _ = TextToPath().get_text_width_height_descent(
        text, FontProperties(size=size, weight=weight), ismath=False)
    return float(width)


def _palette_colors(palette: Any, n: int) -> list:
    """One colour per level: None (near-black, as metafor), a colour, a colormap name or a list."""
    from matplotlib import colormaps
    from matplotlib.colors import is_color_like

    if palette is None:
        return ["0.1"] * n
    if isinstance(palette, str):
        if is_color_like(palette):
            return [palette] * n
        if palette in colormaps:
            cmap = colormaps[palette]
            return [cmap(x) for x in (np.linspace(0.15, 0.85, n) if n > 1 else [0.5])]
        raise DrmError(f"forest: palette {palette!r} is neither a colour nor a matplotlib colormap name.")
    colors = list(palette)
    if not colors or not all(is_color_like(c) for c in colors):
        raise DrmError("forest: palette must be a colour, a colormap name or a list of colours.")
    return [colors[i % len(colors)] for i in range(n)]


def forest(fit: Any, *, label: str | None = None, sort: str | None = None, mod: str | None = None,
           level: float | None = None, transform: TransformArg = None, size_by: str | None = None,
           aggregate: str | None = None, group: str | None = None, test: str | None = None,
           vcov: str | None = None, digits: int | None = None, max_rows: int | None = 60,
           page: int | None = None,
           data: Any = None, xlab: str | None = None, ylab: str | None = None, palette: Any = None,
           show_weights: bool = True, legend: bool = True, log_x: bool | None = None, ax: Any = None,
           **kwargs: Any):
    """Forest plot of :func:`forest_table` (computed from ``fit``, or ``fit`` is such a table).

    Left: the row labels under the header ``ylab`` (default ``"Study"`` or the label column),
    level headings in bold.  Middle: each effect size as a square (area proportional to its
    weight, as metafor) on its confidence interval; each pooled mean as a diamond spanning its
    confidence interval, with its prediction interval as a dotted line with end ticks (metafor's
    ``addpred = TRUE``); a dashed line at no effect.  ``log_x``: a logarithmic x axis (default:
    when the table was back-transformed with ``transform="exp"``, so ratios are symmetric, as
    metafor's ``atransf = exp``).  Right: ``Weight`` (%) and
    ``Estimate [95% CI]`` columns.  Bottom: the heterogeneity line and a legend.  Every number
    comes from the table, and the level, transform and x label from the settings the table
    keeps (``_common.table_settings``): a table passed in is drawn as it is, and a setting
    passed with it that differs from the table's (``level=0.9`` for a 95% table) raises a
    :class:`~drmpy.DrmError`.  Default x label: the response's name and the back-transform
    (``exp(yi)``).

    ``page``: which page (0-based) of a table longer than ``max_rows`` to draw; None draws the
    first with a :class:`~drmpy.DrmWarning` naming the number of pages (use ``aggregate=`` for
    one row per cluster, or ``max_rows=None`` for a single tall page).  ``palette``: colour(s)
    of the squares and diamonds, one per level of ``mod``.  ``kwargs`` style the squares
    (``ax.scatter``).  Returns the Axes; ``ax=None`` draws on a new figure.  Save with
    ``ax.figure.savefig("forest.pdf")`` (or ``.svg``): text stays text.
    """
    given = {"moderator": mod, "level": level, "transform": transform, "size_by": size_by,
             "aggregate": aggregate, "group": group, "test": test, "vcov": vcov, "digits": digits}
    if isinstance(fit, pd.DataFrame):
        table = fit
    else:
        require_univariate(fit, "forest")
        table = forest_table(fit, label=label, sort=sort, mod=mod, level=0.95 if level is None else level,
                             transform=transform, size_by=size_by or "weight", aggregate=aggregate,
                             group=group, test=test or "z", vcov=vcov or "observed",
                             digits=2 if digits is None else digits, max_rows=max_rows, data=data)
    settings = _settings(table, given)
    n_pages = int(table["page"].max()) + 1
    if page is None:
        if n_pages > 1:
            warnings.warn(f"forest: {int((table['kind'] == 'effect').sum())} effect sizes fill {n_pages} pages of "
                          f"at most max_rows rows; drawing page 0. Draw the others with page=1..{n_pages - 1}, "
                          "aggregate to one row per study with aggregate=, or pass max_rows=None.",
                          DrmWarning, stacklevel=2)
        page = 0
    if not 0 <= page < n_pages:
        raise DrmError(f"forest: page must be in 0..{n_pages - 1}, got {page}.")
    rows = table[table["page"] == page]
    effect_sizes = table.loc[table["kind"] == "effect", "size_value"].to_numpy(dtype=np.float64)
    size_range = ((float(np.nanmin(effect_sizes)), float(np.nanmax(effect_sizes)))
                  if np.isfinite(effect_sizes).any() else (1.0, 1.0))
    # every page on the same x range: the whole table's intervals
    drawn_all = table[table["kind"].isin(["effect", "pooled", "overall"])]
    x_values = np.concatenate([drawn_all[c].to_numpy(dtype=np.float64)
                               for c in ("conf_low", "conf_high", "pred_low", "pred_high")])
    return _draw(rows, settings, size_range=size_range, x_values=x_values[np.isfinite(x_values)], page=page, n_pages=n_pages, xlab=xlab, ylab=ylab, palette=palette,
                 show_weights=show_weights, legend=legend, log_x=log_x, ax=ax, **kwargs)


def _draw(rows: pd.DataFrame, settings: dict, *, size_range: tuple[float, float], x_values: np.ndarray,
          page: int, n_pages: int, xlab: str | None, ylab: str | None,
          palette: Any, show_weights: bool, legend: bool, log_x: bool | None, ax: Any, **kwargs: Any):
    from matplotlib import transforms as mtransforms
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon

    n_slots = int(rows["position"].max() - rows["position"].min()) + 1
    # no weight column where the table has no weights (a robust fit with a (1|g) effect)
    show_weights = show_weights and bool(np.isfinite(rows["weight"].to_numpy(dtype=np.float64)).any())
    small = n_slots > 30
    fs = 8.0 if small else 9.0
    digits = int(settings["digits"])
    level = float(settings["level"])
    ci_name = f"{100 * level:g}% CI"
    header_left = ylab if ylab is not None else settings["label_header"]
    header_est = f"Estimate [{ci_name}]"

    # column widths (points): labels on the left, weight and estimate [low, high] on the right
    est = [_fmt(v, digits) for v in rows["estimate"]]
    low = [f"[{_fmt(v, digits)}," for v in rows["conf_low"]]
    high = [f"{_fmt(v, digits)}]" for v in rows["conf_high"]]
    shown = rows["kind"].isin(["effect", "pooled", "overall"]).to_numpy()
    w_label = max([_text_width(str(t), fs, "bold") + (8.0 if k == "effect" and settings["moderator"]
                                                       else 0.0)
                   for t, k in zip(rows["label"], rows["kind"]) if k != "note"] + [_text_width(header_left, fs, "bold")])
    bold = ["normal" if k == "effect" else "bold" for k in rows["kind"]]

    def widest(texts, extra=()):  # means are printed in bold
        return max([_text_width(t, fs, b) for t, s, b in zip(texts, shown, bold) if s] +
                   [_text_width(t, fs, "bold") for t in extra])

    w_weight = widest(list(rows["weight_text"]), ["Weight"])
    w_est, w_low, w_high = widest(est), widest(low), widest(high)
    gap = 0.5 * fs
    right_w = (w_weight + 2 * gap if show_weights else 0.0) + max(w_est + w_low + w_high + 2 * gap,
                                                                 _text_width(header_est, fs, "bold"))
    fig_width = min(4.2 + (w_label + right_w + 24.0) / 72.0, 14.0)
    ax = new_axes(ax, (fig_width, 1.9 + (0.155 if small else 0.2) * n_slots))
    fig = ax.figure
    blend = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)

    def at(dx: float):  # x = axis edge + dx points, y in data units
        return blend + mtransforms.ScaledTranslation(dx / 72.0, 0.0, fig.dpi_scale_trans)

    levels = list(dict.fromkeys(rows.loc[rows["kind"].isin(["effect", "pooled"]), "level"]))
    colors = dict(zip(levels, _palette_colors(palette, max(len(levels), 1))))
    overall_color = _palette_colors(palette, 1)[0] if palette is None or len(levels) <= 1 else "0.1"

    effects = rows[rows["kind"] == "effect"]
    eff_colors = [colors.get(lv, "0.1") for lv in effects["level"]]
    ax.hlines(effects["position"], effects["conf_low"], effects["conf_high"], colors=eff_colors,
              linewidths=0.9, zorder=2, label="_sampling intervals")
    # the same scale on every page: the whole table's smallest and largest size value
    sizes = effects["size_value"].to_numpy(dtype=np.float64)
    if settings["size_by"] == "weight":  # area proportional to weight, as metafor
        areas = np.clip(70.0 * sizes / size_range[1], 3.0, None)
    else:
        areas = marker_areas(np.r_[sizes, size_range], 6.0, 70.0)[:len(sizes)]
    square_kw = {"marker": "s", "linewidths": 0, "zorder": 3}
    if not {"c", "color", "facecolor", "facecolors"} & set(kwargs):
        square_kw["c"] = eff_colors
    square_kw.update(kwargs)
    ax.scatter(effects["estimate"], effects["position"], s=areas, label="_effect sizes", **square_kw)

    half_height = 0.4
    for _, row in rows[rows["kind"].isin(["pooled", "overall"])].iterrows():
        y = row["position"]
        color = colors.get(row["level"], overall_color) if row["kind"] == "pooled" else overall_color
        ax.hlines(y, row["pred_low"], row["pred_high"], colors=color, linewidths=1.0, linestyles=":",
                  zorder=2, label="_prediction interval")
        ax.vlines([row["pred_low"], row["pred_high"]], y - 0.2, y + 0.2, colors=color, linewidths=1.0,
                  zorder=2, label="_prediction interval ends")
        ax.add_patch(Polygon([(row["conf_low"], y), (row["estimate"], y + half_height),
                              (row["conf_high"], y), (row["estimate"], y - half_height)], closed=True,
                             facecolor=color, edgecolor=color, zorder=4,
                             label="pooled mean" if row["kind"] == "pooled" else "overall mean"))

    drawn = rows[shown]
    top = float(rows["position"].max())
    bottom = float(rows["position"].min())
    reference = settings["reference"]
    if reference is not None and np.isfinite(reference):
        low_y = float(drawn["position"].min()) - 0.6 if len(drawn) else bottom
        ax.vlines(reference, low_y, top + 0.5, colors="0.45", linewidths=0.8, linestyles="--", zorder=0,
                  label="_no effect")

    # left column: labels (headings and means bold, effect sizes indented under a heading)
    indent = 8.0 if settings["moderator"] else 0.0
    for _, row in rows.iterrows():
        kind = row["kind"]
        if kind == "note":
            ax.text(0.0, row["position"], row["label"], transform=at(-(w_label + 2 * gap)), ha="left",
                    va="center", fontsize=fs - 0.5, style="italic", color="0.2", gid="forest:note")
            continue
        ax.text(0.0, row["position"], str(row["label"]),
                transform=at(-(w_label + 2 * gap) + (indent if kind == "effect" else 0.0)), ha="left",
                va="center", fontsize=fs, fontweight="normal" if kind == "effect" else "bold",
                gid=f"forest:label:{kind}")
    # right columns: weight (%), estimate, [low, high]
    x = gap
    columns = []
    if show_weights:
        x += w_weight
        columns.append(("weight", x, list(rows["weight_text"])))
        x += 2 * gap
    # a header wider than the three estimate columns pushes them right, never onto the weights
    x += max(0.0, _text_width(header_est, fs, "bold") - (w_est + w_low + w_high + 2 * gap))
    for name, width, texts in (("estimate", w_est, est), ("conf_low", w_low, low), ("conf_high", w_high, high)):
        x += width + (gap if name != "estimate" else 0.0)
        columns.append((name, x, texts))
    for name, x_right, texts in columns:
        for y, text, show, kind in zip(rows["position"], texts, shown, rows["kind"]):
            if show:
                ax.text(1.0, y, text, transform=at(x_right), ha="right", va="center", fontsize=fs,
                        fontweight="normal" if kind == "effect" else "bold", gid=f"forest:{name}")
    header_y = top + 1.3
    first = rows.iloc[0]
    if first["kind"] == "effect" and settings["moderator"]:  # a level carried over from the last page
        ax.text(0.0, top + 1.0, f"{first['level']} (continued)", transform=at(-(w_label + 2 * gap)), ha="left",
                va="center", fontsize=fs, fontweight="bold", gid="forest:label:heading")
        header_y += 1.0
    ax.text(0.0, header_y, header_left, transform=at(-(w_label + 2 * gap)), ha="left", va="center",
            fontsize=fs, fontweight="bold", gid="forest:header")
    if show_weights:
        ax.text(1.0, header_y, "Weight", transform=at(columns[0][1]), ha="right", va="center", fontsize=fs,
                fontweight="bold", gid="forest:header")
    ax.text(1.0, header_y, header_est, transform=at(columns[-1][1]), ha="right", va="center", fontsize=fs,
            fontweight="bold", gid="forest:header")
    if n_pages > 1:
        ax.text(1.0, header_y + 0.9, f"page {page + 1} of {n_pages}", transform=at(columns[-1][1]),
                ha="right", va="center", fontsize=fs - 1, color="0.35", gid="forest:page")

    values = x_values
    if reference is not None and np.isfinite(reference):
        values = np.r_[values, reference]
    if log_x is None:
        log_x = settings["transform"] == "exp"
    if log_x:
        if values.size and np.any(values <= 0):
            raise DrmError("forest(log_x=True): the drawn values include zero or negatives; a log axis "
                           "needs ratios (transform='exp').")
        _log_axis(ax, values)
    elif values.size:
        lo, hi = float(values.min()), float(values.max())
        pad = 0.04 * (hi - lo if hi > lo else 1.0)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(bottom - 0.7, header_y + (1.4 if n_pages > 1 else 0.7))
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=fs)
    ax.set_xlabel(xlab if xlab is not None else effect_label(settings["response"], settings["transform"]),
                  fontsize=fs + 0.5)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_bounds(*ax.get_xlim())

    if legend:
        handles = [
            Line2D([], [], color="0.1", marker="s", markersize=5, linewidth=0.9),
            Line2D([], [], color="0.1", marker="D", markersize=6, linestyle="none"),
            Line2D([], [], color="0.1", linestyle=":", linewidth=1.0),
        ]
        size_by = settings["size_by"]
        sized = {"weight": "weight", "precision": "precision 1/SE"}.get(size_by, str(size_by))
        texts = [f"effect size and {ci_name} (square area ∝ {sized})",
                 f"pooled mean and {ci_name} (diamond)",
                 f"{100 * level:g}% prediction interval (dotted line)"]
        ax.legend(handles, texts, loc="upper center", ncol=3 if fig_width >= 8.5 else 1, frameon=False,
                  fontsize=fs - 0.5, bbox_to_anchor=(0.5, 0.0),
                  bbox_transform=ax.transAxes + mtransforms.ScaledTranslation(0, -(2.6 * fs + 12) / 72.0,
                                                                             fig.dpi_scale_trans),
                  handlelength=2.2, columnspacing=1.2)
    return ax


def _log_axis(ax: Any, values: np.ndarray) -> None:
    """Log x axis over ``values`` with round ticks (0.1, 0.2, 0.5, 1, 2, 5, ...) printed plainly."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.5, 2.0)
    pad = (hi / lo) ** 0.04 if hi > lo else 1.5
    ax.set_xscale("log")
    ax.set_xlim(lo / pad, hi * pad)
    decades = np.arange(np.floor(np.log10(lo / pad)), np.ceil(np.log10(hi * pad)) + 1)
    for mantissas in ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
                      (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)):
        ticks = np.array([m * 10.0 ** d for d in decades for m in mantissas])
        ticks = ticks[(ticks >= lo / pad) & (ticks <= hi * pad)]
        if len(ticks) >= 4:
            break
    if len(ticks) > 9:
        ticks = ticks[np.isclose(np.log10(ticks) % 1.0, 0.0) | np.isclose(ticks, 1.0)]
    ax.xaxis.set_major_locator(FixedLocator(ticks.tolist()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
