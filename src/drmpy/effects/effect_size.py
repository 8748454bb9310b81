"""``effect_size``: effect sizes and their sampling variances from study summaries (metafor's ``escalc``).

Every measure computes ``yi`` and ``vi`` exactly as metafor 3.8-1's ``escalc`` does with its
defaults (``add = 1/2``, ``to = "only0"``, ``vtype = "LS"``), including the zero-cell
correction of 2x2 tables, proportions and incidence counts.  All arithmetic is vectorised
numpy on float64 columns.  As in ``escalc``, a result that is infinite or NaN, and a
negative variance, become NaN (a missing ``yi``/``vi`` that :func:`drmpy.fit` drops and counts).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

from ..errors import DataError
from ..model.frames import is_numeric_values

__all__ = ["effect_size", "MEASURES"]

_MEANS = ("MD", "SMD", "SMDH", "ROM", "VR", "CVR")
_TABLES = ("OR", "RR", "RD", "PETO")
_CORRELATIONS = ("ZCOR", "COR")
_PROPORTIONS = ("PR", "PLO", "PAS", "PFT")
_INCIDENCE = ("IRR", "IRD")

#: Every measure ``effect_size`` knows, by kind of input.
MEASURES: dict[str, tuple[str, ...]] = {
    "means": _MEANS,
    "2x2 tables": _TABLES,
    "correlations": _CORRELATIONS,
    "proportions": _PROPORTIONS,
    "incidence": _INCIDENCE,
}

_MEAN_ARGS = ("m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i")
_ARGS: dict[str, tuple[str, ...]] = {
    **{m: _MEAN_ARGS for m in _MEANS},
    "VR": ("sd1i", "n1i", "sd2i", "n2i"),
    **{m: ("ai", "ci") for m in _TABLES},  # plus bi or n1i, di or n2i (checked separately)
    **{m: ("ri", "ni") for m in _CORRELATIONS},
    **{m: ("xi", "ni") for m in _PROPORTIONS},
    **{m: ("x1i", "t1i", "x2i", "t2i") for m in _INCIDENCE},
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    **{m: ("bi", "di", "n1i", "n2i") for m in _TABLES},
    "VR": ("m1i", "m2i"),  # accepted (as by escalc) and not used
}

# metafor's variance types per measure; the first is escalc's default "LS".  Measures not
# listed have one sampling variance.
_VTYPES: dict[str, tuple[str, ...]] = {
    "MD": ("LS", "UB", "HO"),
    "SMD": ("LS", "UB", "LS2", "AV"),
    "SMDH": ("LS", "LS2"),
    "ROM": ("LS", "HO", "AV", "AVHO"),
    "RD": ("LS", "UB", "AV"),
    "COR": ("LS", "AV"),
    "PR": ("LS", "UB", "AV"),
    "PLO": ("LS", "AV"),
}
_TO = ("all", "only0", "if0all", "none")
# escalc's default ``add`` is 1/2, except 0 for the arcsine measures
_ADD_ZERO_DEFAULT = ("PAS", "PFT")


# ------------------------------------------------------------------------------------------
# inputs


class _Inputs:
    """The measure's input columns as float64 arrays, and how to name a row in a message."""

    def __init__(self, measure: str, data: Any, columns: Mapping[str, Any]) -> None:
        self.measure = measure
        self.sources: dict[str, str] = {}
        self.values: dict[str, np.ndarray] = {}
        self.labels = None
        n = None
        if data is not None and isinstance(data, pd.DataFrame):
            self.labels = data.index
        for arg, spec in columns.items():
            values = self._column(data, arg, spec)
            if n is not None and values.shape[0] != n:
                raise DataError(f"effect_size('{measure}'): `{arg}` has {values.shape[0]} values, "
                                f"the other inputs {n}.")
            n = values.shape[0]
            self.values[arg] = values
        if data is not None:
            n_data = _n_rows(data)
            if n is not None and n != n_data:
                raise DataError(f"effect_size('{measure}'): the inputs have {n} values but `data` has {n_data} rows.")
            n = n_data
        self.n = 0 if n is None else n

    def _column(self, data: Any, arg: str, spec: Any) -> np.ndarray:
        if isinstance(spec, str):
            if data is None:
                raise DataError(f"effect_size('{self.measure}'): `{arg}` = '{spec}' names a column but no `data` was given.")
            self.sources[arg] = spec
            raw = _data_column(data, spec, self.measure, arg)
        else:
            raw = spec
            if not is_numeric_values(raw):
                raise DataError(f"effect_size('{self.measure}'): `{arg}` is not numeric (numbers stored as "
                                "text or booleans are not converted).")
        try:
            if isinstance(raw, pd.Series):
                values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                values = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"effect_size('{self.measure}'): `{arg}`{self._source(arg)} is not numeric.") from exc
        if values.ndim != 1:
            values = values.reshape(-1) if values.ndim == 0 else values
            if values.ndim != 1:
                raise DataError(f"effect_size('{self.measure}'): `{arg}` must be one-dimensional, got shape {values.shape}.")
        return values

    def _source(self, arg: str) -> str:
        return f" (column `{self.sources[arg]}`)" if arg in self.sources else ""

    def row(self, position: int) -> str:
        if self.labels is not None and not isinstance(self.labels, pd.RangeIndex):
            return f"row {position} (index {self.labels[position]!r})"
        return f"row {position}"

    def fail_below(self, arg: str, bound: float, problem: str, strict: bool = True) -> None:
        """:meth:`fail_where` for ``values < bound`` (``<=`` when not ``strict``), with a
        NaN-ignoring minimum first so that valid columns cost one pass and no allocation."""
        values = self.values[arg]
        if values.size == 0:
            return
        low = np.fmin.reduce(values)
        if low < bound or (not strict and low <= bound):
            self.fail_where(values < bound if strict else values <= bound, arg, problem)

    def fail_where(self, mask: np.ndarray, arg: str, problem: str, shown: np.ndarray | None = None) -> None:
        """Raise a DataError naming the measure, the argument and the first row where ``mask`` holds."""
        if mask.any():
            i = int(np.argmax(mask))
            value = (self.values[arg] if shown is None else shown)[i]
            raise DataError(f"effect_size('{self.measure}'): `{arg}`{self._source(arg)} {problem}; "
                            f"first at {self.row(i)} (value {value:g}).")


def _n_rows(data: Any) -> int:
    if isinstance(data, pd.DataFrame):
        return len(data)
    import narwhals as nw

    try:
        return len(nw.from_native(data, eager_only=True))
    except TypeError as exc:
        raise DataError(f"`data` must be a pandas or polars DataFrame, got {type(data).__name__}.") from exc


def _data_column(data: Any, name: str, measure: str, arg: str) -> Any:
    if isinstance(data, pd.DataFrame):
        if name not in data.columns:
            raise DataError(f"effect_size('{measure}'): `{arg}` = '{name}' is not a column of `data` "
                            f"(columns: {', '.join(map(str, data.columns[:20]))}).")
        column = data[name]
        if isinstance(column, pd.DataFrame):
            raise DataError(f"effect_size('{measure}'): `{arg}`: `data` has {column.shape[1]} columns named "
                            f"`{name}`; rename or drop the duplicates.")
        if not (pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)):
            raise DataError(f"effect_size('{measure}'): `{arg}` (column `{name}`) is not numeric (dtype {column.dtype}).")
        return column
    import narwhals as nw

    frame = nw.from_native(data, eager_only=True)
    if name not in frame.columns:
        raise DataError(f"effect_size('{measure}'): `{arg}` = '{name}' is not a column of `data` "
                        f"(columns: {', '.join(frame.columns[:20])}).")
    series = frame[name]
    if not series.dtype.is_numeric():
        raise DataError(f"effect_size('{measure}'): `{arg}` (column `{name}`) is not numeric (dtype {series.dtype}).")
    return series.cast(nw.Float64).to_numpy()


# ------------------------------------------------------------------------------------------
# public function


def effect_size(measure: str, data: Any = None, *, var_names: Sequence[str] = ("yi", "vi"),
                add: float | None = None, to: str = "only0", vtype: str = "LS", **columns: Any):
    """Effect sizes ``yi`` and sampling variances ``vi`` from study summaries, as metafor's ``escalc``.

    Parameters
    ----------
    measure
        Means: ``"MD"`` (raw mean difference), ``"SMD"`` (Hedges' g, exact correction factor
        ``c(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2))``, ``m = n1 + n2 - 2``), ``"SMDH"``
        (heteroscedastic SMD), ``"ROM"`` (log ratio of means, lnRR), ``"VR"`` (log ratio of SDs,
        lnVR) and ``"CVR"`` (log ratio of coefficients of variation, lnCVR; Nakagawa et al. 2015).
        2x2 tables: ``"OR"`` (log odds ratio), ``"RR"`` (log risk ratio), ``"RD"`` (risk
        difference), ``"PETO"`` (Peto's log odds ratio).  Correlations: ``"ZCOR"`` (Fisher's z),
        ``"COR"``.  Proportions: ``"PR"``, ``"PLO"`` (logit), ``"PAS"`` (arcsine square root),
        ``"PFT"`` (Freeman-Tukey double arcsine).  Incidence: ``"IRR"`` (log rate ratio),
        ``"IRD"`` (rate difference).
    data
        A pandas or polars frame, or None.
    var_names
        Names of the two columns added (metafor's ``var.names``); existing columns of these
        names are replaced in the returned copy.
    add, to
        Zero-cell correction of 2x2 tables, proportions and incidence counts: ``add`` is added to
        every cell of the rows with a zero cell (``to="only0"``), of all rows (``"all"``), of all
        rows when any row has a zero cell (``"if0all"``), or of none (``"none"``).  ``add=None``
        is metafor's default: 1/2, but 0 for ``PAS`` and ``PFT``.
    vtype
        metafor's variance type: ``"LS"`` (default) for every measure; also ``"UB"``, ``"HO"`` for
        MD; ``"UB"``, ``"LS2"``, ``"AV"`` for SMD; ``"LS2"`` for SMDH; ``"HO"``, ``"AV"``,
        ``"AVHO"`` for ROM; ``"UB"``, ``"AV"`` for RD and PR; ``"AV"`` for COR and PLO.
    **columns
        metafor's argument names, each a column name of ``data`` or an array: ``m1i, sd1i, n1i,
        m2i, sd2i, n2i`` (means; VR needs only the SDs and sizes), ``ai, bi, ci, di`` or ``ai,
        n1i, ci, n2i`` (2x2 tables), ``ri, ni`` (correlations), ``xi, ni`` (proportions),
        ``x1i, t1i, x2i, t2i`` (incidence).

    Returns
    -------
    A new frame of the same kind as ``data`` (pandas or polars; ``data`` is never modified)
    with ``yi`` and ``vi`` appended, or a pandas frame of just ``yi`` and ``vi`` when ``data`` is
    None.  Rows with a missing input get NaN ``yi`` and ``vi``; so do rows whose result
    metafor recodes to NA (infinite or NaN values, a negative variance, and ``vi`` of a
    correlation with ``ni <= 3``).

    Raises
    ------
    DataError
        An unknown measure (the message lists the known ones), a missing or unexpected
        argument, a column that is absent or not numeric, and impossible values: negative SDs
        or counts, a group size below 2 for mean-based measures (and correlations), ``|r| >= 1``,
        counts above their totals, ``n1i != ai + bi``, person-times <= 0.  The message names the
        measure, the argument and the first offending row.  (metafor allows ``n = 1`` and
        ``|r| = 1`` and returns NA; drmpy refuses them as errors in the data.)

    Examples
    --------
    >>> import drmpy as drm, pandas as pd
    >>> d = pd.DataFrame({"m1": [10.0, 12.0], "s1": [2.0, 3.0], "n1": [20, 30],
    ...                   "m2": [9.0, 11.0], "s2": [2.5, 2.0], "n2": [22, 28]})
    >>> drm.effect_size("SMD", d, m1i="m1", sd1i="s1", n1i="n1", m2i="m2", sd2i="s2", n2i="n2").round(4)
         m1   s1  n1    m2   s2  n2      yi      vi
    0  10.0  2.0  20   9.0  2.5  22  0.4310  0.0977
    1  12.0  3.0  30  11.0  2.0  28  0.3843  0.0703
    """
    measure = _check_measure(measure)
    var_names = _check_var_names(var_names)
    _check_data(data, f"effect_size('{measure}')")
    to = _check_to(to, measure)
    vtype = _check_vtype(vtype, measure)
    if add is None:
        add = 0.0 if measure in _ADD_ZERO_DEFAULT else 0.5
    else:
        try:
            add = float(add)
        except (TypeError, ValueError) as exc:
            raise DataError(f"effect_size('{measure}'): `add` must be a number, got {add!r}.") from exc
        if not np.isfinite(add) or add < 0:
            raise DataError(f"effect_size('{measure}'): `add` must be a finite number >= 0, got {add!r}.")
    _check_arguments(measure, columns)
    inputs = _Inputs(measure, data, columns)
    # division by zero and logs of zero are expected (escalc recodes them to NA below)
    with np.errstate(divide="ignore", invalid="ignore"):
        if measure in _MEANS:
            yi, vi = _means(measure, inputs, vtype)
        elif measure in _TABLES:
            yi, vi = _tables(measure, inputs, add, to, vtype)
        elif measure in _CORRELATIONS:
            yi, vi = _correlations(measure, inputs, vtype)
        elif measure in _PROPORTIONS:
            yi, vi = _proportions(measure, inputs, add, to, vtype)
        else:
            yi, vi = _incidence(measure, inputs, add, to)
    if measure in _CORRELATIONS:
        vi = np.where(inputs.values["ni"] <= 3, np.nan, vi)  # escalc: no sampling variance when ni <= 3
    yi, vi, undefined = _as_escalc_missing(measure, inputs, yi, vi)
    if undefined.size:
        _warn_undefined(measure, inputs, undefined)
    return _attach(data, yi, vi, var_names)


# why a measure's result can be undefined although every input is present
_UNDEFINED_REASONS = {
    "ROM": "log(m1i/m2i) needs two means of the same sign, neither zero",
    "CVR": "log(sd1i/m1i) and log(sd2i/m2i) need positive means and SDs",
    "VR": "log(sd1i/sd2i) needs positive SDs",
    **{m: "a zero count gives an infinite log or variance; see `add` and `to`"
       for m in _TABLES + _PROPORTIONS + _INCIDENCE},
}


def _warn_undefined(measure: str, inputs: _Inputs, rows: np.ndarray) -> None:
    """metafor warns when escalc recodes a computed value to NA (R's "NaNs produced" for the log
    of a negative ratio, "Some yi/vi values equal to +-Inf"); so does drmpy, naming the rows."""
    import warnings

    from ..errors import DrmWarning

    shown = ", ".join(inputs.row(int(r)).removeprefix("row ") for r in rows[:10])
    more = f", ... ({rows.size} in all)" if rows.size > 10 else ""
    reason = _UNDEFINED_REASONS.get(measure, "the formula gives an infinite or undefined value there")
    warnings.warn(f"effect_size('{measure}'): yi and vi are NaN at row{'s' if rows.size > 1 else ''} "
                  f"{shown}{more}, computed from present inputs ({reason}); metafor's escalc gives NA "
                  "there too.", DrmWarning, stacklevel=3)


def _known_measures() -> str:
    return "; ".join(f"{kind}: {', '.join(ms)}" for kind, ms in MEASURES.items())


def _check_measure(measure: Any) -> str:
    if not isinstance(measure, str):
        raise DataError(f"effect_size: `measure` must be a string, got {type(measure).__name__}. "
                        f"Known measures: {_known_measures()}.")
    if measure not in _ARGS:
        raise DataError(f"effect_size: unknown measure {measure!r}. Known measures: {_known_measures()}.")
    return measure


def _check_data(data: Any, where: str) -> None:
    """``data`` is None, a pandas frame or a frame narwhals can read (polars)."""
    if data is None or isinstance(data, pd.DataFrame):
        return
    import narwhals as nw

    try:
        nw.from_native(data, eager_only=True)
    except TypeError as exc:
        raise DataError(f"{where}: `data` must be a pandas or polars DataFrame, got {type(data).__name__}.") from exc


def _check_var_names(var_names: Sequence[str]) -> tuple[str, str]:
    # a single string would be iterated into its characters
    names = tuple(var_names) if isinstance(var_names, (list, tuple)) else ()
    if len(names) != 2 or not all(isinstance(v, str) for v in names) or names[0] == names[1]:
        raise DataError(f"effect_size: `var_names` must be two different column names, got {var_names!r}.")
    return names  # type: ignore[return-value]


def _check_to(to: str, measure: str) -> str:
    if to not in _TO:
        raise DataError(f"effect_size('{measure}'): `to` must be one of {', '.join(map(repr, _TO))}; got {to!r}.")
    return to


def _check_vtype(vtype: str, measure: str) -> str:
    allowed = _VTYPES.get(measure, ("LS",))
    if vtype not in allowed:
        raise DataError(f"effect_size('{measure}'): `vtype` must be one of {', '.join(map(repr, allowed))} "
                        f"for this measure; got {vtype!r}.")
    return vtype


def _check_arguments(measure: str, columns: Mapping[str, Any]) -> None:
    required = _ARGS[measure]
    optional = _OPTIONAL.get(measure, ())
    unexpected = [a for a in columns if a not in required and a not in optional]
    if unexpected:
        raise DataError(f"effect_size('{measure}'): unexpected argument `{unexpected[0]}`; "
                        f"this measure takes {', '.join(required + optional)}.")
    missing = [a for a in required if a not in columns]
    if measure in _TABLES:
        if "bi" not in columns and "n1i" not in columns:
            missing.append("bi (or n1i)")
        if "di" not in columns and "n2i" not in columns:
            missing.append("di (or n2i)")
    if missing:
        needs = "ai, bi, ci, di or ai, n1i, ci, n2i" if measure in _TABLES else ", ".join(required)
        raise DataError(f"effect_size('{measure}'): missing argument `{missing[0]}`; this measure needs {needs}.")


# ------------------------------------------------------------------------------------------
# measures


def _wmean(x: np.ndarray, w: np.ndarray) -> float:
    """metafor's ``.wmean(x, w, na.rm = TRUE)``: the w-weighted mean over rows where both are present."""
    ok = ~(np.isnan(x) | np.isnan(w))
    return float(np.sum(x[ok] * w[ok]) / np.sum(w[ok]))


def hedges_correction(m: np.ndarray) -> np.ndarray:
    """The exact small-sample correction ``Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2))`` (NaN for m <= 1).

    Degrees of freedom are whole numbers in practice: they are then looked up in a table of
    the distinct values (the same formula, evaluated once per value), which keeps 1e6 rows fast.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.size > 1000:
        top = np.max(m) if m.size else 0.0
        whole = np.isfinite(top) and 2 <= np.min(m) and top <= 10_000_000 and np.array_equal(np.floor(m), m)
        if whole:
            table = _hedges_direct(np.arange(int(top) + 1, dtype=np.float64))
            return table[m.astype(np.int64)]
    return _hedges_direct(m)


def _hedges_direct(m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.exp(gammaln(m / 2) - np.log(np.sqrt(m / 2)) - gammaln((m - 1) / 2))
    return np.where(m <= 1, np.nan, c)


def _means(measure: str, inp: _Inputs, vtype: str) -> tuple[np.ndarray, np.ndarray]:
    v = inp.values
    sd1, sd2, n1, n2 = v["sd1i"], v["sd2i"], v["n1i"], v["n2i"]
    inp.fail_below("sd1i", 0, "is negative (a standard deviation)")
    inp.fail_below("sd2i", 0, "is negative (a standard deviation)")
    inp.fail_below("n1i", 2, "is below 2 (a group size for a mean and SD)")
    inp.fail_below("n2i", 2, "is below 2 (a group size for a mean and SD)")
    if measure == "SMD" and vtype == "LS":
        return _smd_ls(v["m1i"], sd1, n1, v["m2i"], sd2, n2)
    s1, s2 = sd1 * sd1, sd2 * sd2
    if measure == "VR":
        yi = np.log(sd1 / sd2) + 1 / (2 * (n1 - 1)) - 1 / (2 * (n2 - 1))
        return yi, 1 / (2 * (n1 - 1)) + 1 / (2 * (n2 - 1))
    m1, m2 = v["m1i"], v["m2i"]
    ni = n1 + n2
    mi = ni - 2
    sdp2 = ((n1 - 1) * s1 + (n2 - 1) * s2) / mi  # pooled variance
    if measure == "MD":
        yi = m1 - m2
        if vtype == "HO":
            return yi, sdp2 * (1 / n1 + 1 / n2)
        return yi, s1 / n1 + s2 / n2  # "LS" and "UB" are the same for MD
    if measure == "SMD":
        cmi = hedges_correction(mi)
        di = (m1 - m2) / np.sqrt(sdp2)
        yi = cmi * di
        if vtype == "UB":
            vi = 1 / n1 + 1 / n2 + (1 - (mi - 2) / (mi * cmi**2)) * yi**2
        elif vtype == "LS2":
            vi = cmi**2 * (1 / n1 + 1 / n2 + di**2 / (2 * ni))
        elif vtype == "AV":
            vi = 1 / n1 + 1 / n2 + _wmean(yi, ni) ** 2 / (2 * ni)
        else:
            vi = 1 / n1 + 1 / n2 + yi**2 / (2 * ni)
        return yi, vi
    if measure == "SMDH":
        cmi = hedges_correction(mi)
        yi = cmi * (m1 - m2) / np.sqrt((s1 + s2) / 2)
        if vtype == "LS2":
            vi = (yi**2 * s1 / (2 * n1 * (s1 + s2) ** 2) + yi**2 * s2 / (2 * n2 * (s1 + s2) ** 2)
                  + 2 * s1 / (n1 * (s1 + s2)) + 2 * s2 / (n2 * (s1 + s2)))
        else:
            vi = (yi**2 * (s1**2 / (n1 - 1) + s2**2 / (n2 - 1)) / (2 * (s1 + s2) ** 2)
                  + (s1 / (n1 - 1) + s2 / (n2 - 1)) / ((s1 + s2) / 2))
            vi = cmi**2 * vi
        return yi, vi
    if measure == "ROM":
        yi = np.log(m1 / m2)
        if vtype == "HO":
            vi = sdp2 / (n1 * m1**2) + sdp2 / (n2 * m2**2)
        elif vtype == "AV":
            vi = _wmean(sd1 / m1, n1) ** 2 / n1 + _wmean(sd2 / m2, n2) ** 2 / n2
        elif vtype == "AVHO":
            cv1, cv2 = sd1 / m1, sd2 / m2
            ok = ~(np.isnan(n1) | np.isnan(n2) | np.isnan(cv1) | np.isnan(cv2))
            pooled_cv = (np.sum(n1[ok] * cv1[ok]) + np.sum(n2[ok] * cv2[ok])) / np.sum(ni[ok])
            vi = pooled_cv**2 * (1 / n1 + 1 / n2)
        else:
            vi = s1 / (n1 * m1**2) + s2 / (n2 * m2**2)
        return yi, vi
    # CVR
    yi = np.log(sd1 / m1) + 1 / (2 * (n1 - 1)) - np.log(sd2 / m2) - 1 / (2 * (n2 - 1))
    vi = 1 / (2 * (n1 - 1)) + s1 / (n1 * m1**2) + 1 / (2 * (n2 - 1)) + s2 / (n2 * m2**2)
    return yi, vi


_CHUNK = 16_384  # rows per block of the SMD fast path: its temporaries stay in the CPU cache


def _smd_ls(m1: np.ndarray, sd1: np.ndarray, n1: np.ndarray, m2: np.ndarray, sd2: np.ndarray,
            n2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SMD with escalc's default variance, ``1/n1 + 1/n2 + yi^2 / (2 (n1 + n2))``.

    The same formulas as the general branch of :func:`_means`, evaluated block by block
    with in-place operations, so that each input is read from memory once and the
    temporaries stay in cache (at 1e6 rows, memory traffic is the whole cost).
    """
    n = m1.shape[0]
    yi = np.empty(n)
    vi = np.empty(n)
    table = None
    top = np.fmax.reduce(n1) + np.fmax.reduce(n2) if n else 0.0
    if np.isfinite(top) and top <= 10_000_000:
        table = _hedges_direct(np.arange(int(top) - 1, dtype=np.float64))  # c(m) for m = 0 .. top - 2
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        a1, a2 = n1[lo:hi], n2[lo:hi]
        mi = a1 + a2
        mi -= 2
        pooled = np.subtract(a1, 1.0)
        pooled *= sd1[lo:hi]
        pooled *= sd1[lo:hi]
        work = np.subtract(a2, 1.0)
        work *= sd2[lo:hi]
        work *= sd2[lo:hi]
        pooled += work
        pooled /= mi
        np.sqrt(pooled, out=pooled)  # pooled SD
        y = yi[lo:hi]
        np.subtract(m1[lo:hi], m2[lo:hi], out=y)
        y /= pooled
        if table is not None and np.array_equal(np.floor(mi), mi):
            y *= table[mi.astype(np.int64)]
        else:
            y *= _hedges_direct(mi)
        v = vi[lo:hi]
        np.reciprocal(a1, out=v)
        np.reciprocal(a2, out=work)
        v += work
        np.multiply(y, y, out=work)
        mi += 2  # n1 + n2
        work /= mi
        work *= 0.5
        v += work
    return yi, vi


def _zero_cell_rows(cells: Sequence[np.ndarray], to: str) -> np.ndarray | bool:
    """Which rows get ``add``: metafor's ``to`` rule over the cells (NaN cells are not zero)."""
    if to == "all":
        return True
    if to == "none":
        return False
    any_zero = np.zeros(cells[0].shape, dtype=bool)
    for c in cells:
        any_zero |= c == 0
    if to == "only0":
        return any_zero
    return bool(any_zero.any())  # if0all


def _tables(measure: str, inp: _Inputs, add: float, to: str, vtype: str) -> tuple[np.ndarray, np.ndarray]:
    v = inp.values
    ai, ci = v["ai"], v["ci"]
    bi = _other_cell(inp, "ai", "bi", "n1i")
    di = _other_cell(inp, "ci", "di", "n2i")
    for arg, cell in (("ai", ai), ("ci", ci)):
        inp.fail_where(cell < 0, arg, "is a negative count")
    for arg, total, cell, event in (("bi", "n1i", bi, "ai"), ("di", "n2i", di, "ci")):
        if arg in v:
            inp.fail_where(cell < 0, arg, "is a negative count")
        else:
            inp.fail_where(cell < 0, event, f"is larger than its group size `{total}`", shown=v[event])
    rows = _zero_cell_rows((ai, bi, ci, di), to)
    extra = np.where(rows, add, 0.0) if not isinstance(rows, bool) else (add if rows else 0.0)
    ai, bi, ci, di = ai + extra, bi + extra, ci + extra, di + extra
    n1, n2 = ai + bi, ci + di
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = ai / n1, ci / n2
        if measure == "RR":
            return np.log(p1) - np.log(p2), 1 / ai - 1 / n1 + 1 / ci - 1 / n2
        if measure == "OR":
            return np.log(p1 / (1 - p1)) - np.log(p2 / (1 - p2)), 1 / ai + 1 / bi + 1 / ci + 1 / di
        if measure == "RD":
            yi = p1 - p2
            if vtype == "UB":
                vi = p1 * (1 - p1) / (n1 - 1) + p2 * (1 - p2) / (n2 - 1)
            elif vtype == "AV":
                w1, w2 = _wmean(p1, n1), _wmean(p2, n2)
                vi = w1 * (1 - w1) / n1 + w2 * (1 - w2) / n2
            else:
                vi = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
            return yi, vi
        # PETO: (O - E) / V with the hypergeometric mean and variance of ai
        ni = n1 + n2
        events, non_events = ai + ci, bi + di
        expected = events * n1 / ni
        variance = events * non_events * (n1 / ni) * (n2 / ni) / (ni - 1)
        return (ai - expected) / variance, 1 / variance


def _other_cell(inp: _Inputs, event: str, cell: str, total: str) -> np.ndarray:
    """``bi`` (or ``di``), given directly or as ``n1i - ai``; both given must agree where present."""
    v = inp.values
    if cell in v and total in v:
        differs = ~np.isnan(v[total]) & ~np.isnan(v[cell] + v[event]) & (v[total] != v[event] + v[cell])
        inp.fail_where(differs, total, f"is not equal to `{event}` + `{cell}`")
        return np.where(np.isnan(v[cell]), v[total] - v[event], v[cell])
    if cell in v:
        return v[cell]
    return v[total] - v[event]


def _correlations(measure: str, inp: _Inputs, vtype: str) -> tuple[np.ndarray, np.ndarray]:
    ri, ni = inp.values["ri"], inp.values["ni"]
    inp.fail_where(np.abs(ri) >= 1, "ri", "is not a correlation strictly between -1 and 1")
    inp.fail_where(ni < 2, "ni", "is below 2 (a sample size for a correlation)")
    if measure == "ZCOR":
        yi, vi = np.arctanh(ri), 1 / (ni - 3)
    else:
        yi = ri
        centre = _wmean(yi, ni) if vtype == "AV" else yi
        vi = (1 - centre**2) ** 2 / (ni - 1)
    return yi, vi


def _proportions(measure: str, inp: _Inputs, add: float, to: str, vtype: str) -> tuple[np.ndarray, np.ndarray]:
    xi, ni = inp.values["xi"], inp.values["ni"]
    inp.fail_where(xi < 0, "xi", "is a negative count")
    inp.fail_where(ni <= 0, "ni", "is not a positive group size")
    inp.fail_where(xi > ni, "xi", "is larger than its group size `ni`")
    mi = ni - xi
    rows = _zero_cell_rows((xi, mi), to)
    extra = np.where(rows, add, 0.0) if not isinstance(rows, bool) else (add if rows else 0.0)
    xi, mi = xi + extra, mi + extra
    ni = xi + mi
    with np.errstate(invalid="ignore", divide="ignore"):
        pri = xi / ni
        if measure == "PR":
            if vtype == "UB":
                vi = pri * (1 - pri) / (ni - 1)
            elif vtype == "AV":
                w = _wmean(pri, ni)
                vi = w * (1 - w) / ni
            else:
                vi = pri * (1 - pri) / ni
            return pri, vi
        if measure == "PLO":
            if vtype == "AV":
                w = _wmean(pri, ni)
                vi = 1 / (w * ni) + 1 / ((1 - w) * ni)
            else:
                vi = 1 / xi + 1 / mi
            return np.log(pri / (1 - pri)), vi
        if measure == "PAS":
            return np.arcsin(np.sqrt(pri)), 1 / (4 * ni)
        yi = 0.5 * (np.arcsin(np.sqrt(xi / (ni + 1))) + np.arcsin(np.sqrt((xi + 1) / (ni + 1))))
        return yi, 1 / (4 * ni + 2)


def _incidence(measure: str, inp: _Inputs, add: float, to: str) -> tuple[np.ndarray, np.ndarray]:
    v = inp.values
    x1, t1, x2, t2 = v["x1i"], v["t1i"], v["x2i"], v["t2i"]
    inp.fail_where(x1 < 0, "x1i", "is a negative count")
    inp.fail_where(x2 < 0, "x2i", "is a negative count")
    inp.fail_where(t1 <= 0, "t1i", "is not a positive person-time")
    inp.fail_where(t2 <= 0, "t2i", "is not a positive person-time")
    rows = _zero_cell_rows((x1, x2), to)
    extra = np.where(rows, add, 0.0) if not isinstance(rows, bool) else (add if rows else 0.0)
    x1, x2 = x1 + extra, x2 + extra
    with np.errstate(invalid="ignore", divide="ignore"):
        ir1, ir2 = x1 / t1, x2 / t2
        if measure == "IRR":
            return np.log(ir1) - np.log(ir2), 1 / x1 + 1 / x2
        return ir1 - ir2, ir1 / t1 + ir2 / t2


def _as_escalc_missing(measure: str, inputs: _Inputs, yi: np.ndarray,
                       vi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """escalc's recoding of impossible results.

    +-Inf in yi or vi, or a NaN that arithmetic made from present inputs, makes both NaN
    (R's NA).  A NaN that comes from a missing input is R's NA, which escalc leaves where it
    propagated (e.g. MD with a missing mean keeps its variance), as is the NA variance of a
    correlation with ``ni <= 3``.  A negative vi becomes NaN (silently, as in escalc).  Also
    returns the positions of the rows whose yi and vi were recoded although their inputs are
    present (sorted).
    """
    yi, vi = np.asarray(yi, dtype=np.float64), np.asarray(vi, dtype=np.float64)
    if yi.shape != vi.shape:
        yi, vi = np.broadcast_arrays(yi, vi)
    # results are written in place below: copy any that is a broadcast view or shares an input
    inputs_list = list(inputs.values.values())
    yi, vi = (x if x.flags.writeable and x.flags.owndata and not any(np.may_share_memory(x, i) for i in inputs_list)
              else x.copy() for x in (yi, vi))
    with np.errstate(invalid="ignore"):
        suspect = np.flatnonzero(~np.isfinite(yi + vi))  # one pass; the few suspect rows in detail
    undefined = np.zeros(0, dtype=np.int64)
    if suspect.size:
        missing = np.zeros(suspect.size, dtype=bool)
        for values in inputs.values.values():
            missing |= np.isnan(values[suspect])
        if measure in _CORRELATIONS:
            missing |= inputs.values["ni"][suspect] <= 3
        y, v = yi[suspect], vi[suspect]
        bad = np.isinf(y) | np.isinf(v) | ((np.isnan(y) | np.isnan(v)) & ~missing)
        yi[suspect[bad]] = np.nan
        vi[suspect[bad]] = np.nan
        undefined = suspect[bad]
    with np.errstate(invalid="ignore"):
        vi[vi < 0] = np.nan
    return yi, vi, undefined


# ------------------------------------------------------------------------------------------
# output


def _attach(data: Any, yi: np.ndarray, vi: np.ndarray, var_names: tuple[str, str]):
    yname, vname = var_names
    if data is None:
        return pd.DataFrame({yname: yi, vname: vi})
    if isinstance(data, pd.DataFrame):
        out = data.copy(deep=False)  # a new frame; the caller's frame is untouched
        out[yname] = yi
        out[vname] = vi
        return out
    import narwhals as nw

    frame = nw.from_native(data, eager_only=True)
    backend = nw.get_native_namespace(frame)
    out = frame.with_columns(nw.new_series(yname, yi, nw.Float64, backend=backend),
                             nw.new_series(vname, vi, nw.Float64, backend=backend))
    return out.to_native()
