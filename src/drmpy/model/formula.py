"""Formulas: one per distributional parameter, parsed into fixed and special terms.

``Formula("yi ~ x + (1|study) + meta_V(V=vi)", "sigma ~ habitat", "sd(study) ~ habitat")``
holds, per distributional parameter (``mu``, ``sigma``, ``sd(<group>)``), the fixed-effect
right-hand side handed to formulaic.  The ``mu`` formula also carries the response, the
known-sampling-covariance marker ``meta_V(V=name)`` and the random-effect terms
``(1|g)``, ``(0 + x|g)``, ``(1 + x||g)``, ``(1 + x|g)``, ``(1|a/b)`` and
``relmat(1|g, K=name)`` and ``phylo(1|species, tree=name)``; formulaic never sees those.
"""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import FormulaError

__all__ = ["Formula", "RandomTerm", "MetaV", "register_dpar_names", "family_dpar_names"]

_SD_DPAR = re.compile(r"^sd\((?P<inner>.+)\)$")


@dataclass(frozen=True)
class MetaV:
    """The ``meta_V(V=name)`` marker: ``name`` resolves to the known sampling (co)variance."""

    name: str


@dataclass(frozen=True)
class RandomTerm:
    """One random-effect term of the ``mu`` formula.

    Attributes:
        group: grouping expression after expansion (``"study"``, ``"district:school"``).
        intercept: whether the term has a random intercept.
        slopes: names of numeric columns with random slopes.
        correlated: intercept and slopes share a correlated covariance (``|``) rather than
            independent SDs (``||``).  Irrelevant with a single coefficient.
        relmat: name of a known relatedness matrix K among the levels, or None; for
            ``phylo()`` the name (or quoted literal) of the tree whose correlation matrix is K.
        text: the term as written, for messages.
        relmat_levels: name of the labels of K's rows when K is a plain array.
        relmat_kind: ``"K"`` (relmat: K given) or ``"tree"`` (phylo: K = phylo_corr(tree)).
    """

    group: str
    intercept: bool
    slopes: tuple[str, ...]
    correlated: bool
    relmat: str | None
    text: str
    relmat_levels: str | None = None
    relmat_kind: str = "K"

    @property
    def group_columns(self) -> tuple[str, ...]:
        return tuple(self.group.split(":"))

    @property
    def coefficient_names(self) -> tuple[str, ...]:
        return (("(Intercept)",) if self.intercept else ()) + self.slopes

    def sd_dpars(self) -> tuple[str, ...]:
        """Names of the SD parameters this term owns: ``sd(g)`` for the intercept, ``sd(g|x)`` for slopes."""
        names = []
        for coef in self.coefficient_names:
            names.append(f"sd({self.group})" if coef == "(Intercept)" else f"sd({self.group}|{coef})")
        return tuple(names)

    def cor_dpars(self) -> tuple[str, ...]:
        """Correlation parameters (atanh scale) of a correlated term, ``cor(g|a,b)`` per pair."""
        if not self.correlated:
            return ()
        coefs = self.coefficient_names
        return tuple(
            f"cor({self.group}|{coefs[i]},{coefs[j]})"
            for i in range(len(coefs))
            for j in range(i + 1, len(coefs))
        )


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` where it is not inside parentheses or brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"Unbalanced parentheses in formula `{text}`.")
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    if depth != 0:
        raise FormulaError(f"Unbalanced parentheses in formula `{text}`.")
    parts.append(text[start:])
    return parts


def _split_tilde(text: str) -> tuple[str, str]:
    pieces = _split_top_level(text, "~")
    if len(pieces) == 1:
        raise FormulaError(f"Formula `{text}` has no `~`.")
    if len(pieces) > 2:
        raise FormulaError(f"Formula `{text}` has more than one `~`.")
    return pieces[0].strip(), pieces[1].strip()


BIVARIATE_DPARS = ("mu1", "mu2", "sigma1", "sigma2", "rho12")


# Distributional parameters beyond mu, sigma and sd(g) that a family estimates (``nu`` of
# drm.student(), ``sigma_out``/``p_out`` of drm.normal_mixture()): name -> family name.  Families
# register their names here when they are defined (drmpy.families), so the formula layer
# accepts ``nu ~ 1`` without knowing any family.
_FAMILY_DPARS: dict[str, str] = {}


def register_dpar_names(names: tuple[str, ...], family: str) -> None:
    """Accept ``names`` as distributional parameters (left sides ``nu ~ x``), owned by ``family``."""
    for name in names:
        owner = _FAMILY_DPARS.get(name)
        if name in ("mu", "sigma") or name in BIVARIATE_DPARS or _SD_DPAR.match(name):
            raise FormulaError(f"`{name}` is a built-in distributional parameter; a family cannot register it.")
        if owner is not None and owner != family:
            raise FormulaError(f"The distributional parameter `{name}` is already registered by family {owner}.")
        _FAMILY_DPARS[name] = family


def family_dpar_names() -> dict[str, str]:
    """Registered family parameters, in registration order: name -> family name."""
    return dict(_FAMILY_DPARS)


def _is_dpar_name(lhs: str) -> bool:
    return (lhs in ("sigma", "mu") or lhs in BIVARIATE_DPARS or lhs in _FAMILY_DPARS
            or bool(_SD_DPAR.match(lhs)))


def _user_stacklevel() -> int:
    """stacklevel that attributes a warning to the first frame outside drmpy."""
    import os

    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # src/drmpy
    frame = inspect.currentframe()
    level = 1
    try:
        frame = frame.f_back if frame is not None else None  # the caller of this helper
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package_dir):
            frame = frame.f_back
            level += 1
        return level
    finally:
        del frame


def _parse_meta_v(term: str) -> MetaV:
    try:
        call = ast.parse(term, mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"Cannot parse `{term}`: {exc.msg}.") from exc
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    fname = call.func.id
    if call.args:
        raise FormulaError(
            f"`{term}`: {fname}() takes its covariance by name only, as `{fname}(V = vi)`; "
            "positional arguments are not accepted."
        )
    if not call.keywords:
        raise FormulaError(f"`{term}`: {fname}() needs `V = <name>`.")
    names = [kw.arg for kw in call.keywords]
    for kw in call.keywords:
        if kw.arg in ("w", "scale"):
            raise FormulaError(
                f"`{term}`: the argument `{kw.arg}=` is reserved for the proportional (scaled) "
                "sampling-variance model, which drmpy does not support yet; give only `V = <name>`."
            )
        if kw.arg != "V":
            raise FormulaError(
                f"`{term}`: unknown argument `{kw.arg}=`; {fname}() accepts only `V = <name>`."
            )
    if len(names) != 1:
        raise FormulaError(f"`{term}`: give `V =` exactly once.")
    value = call.keywords[0].value
    if not isinstance(value, ast.Name):
        raise FormulaError(
            f"`{term}`: V must be a bare name (a data column or a variable), not an expression; "
            "compute it first and pass its name."
        )
    if fname == "meta_known_V":
        warnings.warn(
            "meta_known_V() is deprecated; use meta_V(V = ...).", DeprecationWarning,
            stacklevel=_user_stacklevel(),
        )
    return MetaV(value.id)


_RANDOM_BAR = re.compile(r"^\((?P<lhs>[^|]*?)(?P<bar>\|\|?)(?P<group>[^|]*)\)$", re.S)


def _parse_random_lhs(lhs: str, text: str) -> tuple[bool, tuple[str, ...]]:
    pieces = [p.strip() for p in _split_top_level(lhs.replace("-", "+-"), "+") if p.strip()]
    intercept = True
    slopes: list[str] = []
    for piece in pieces:
        if piece == "1":
            intercept = True
        elif piece in ("0", "-1", "+0"):
            intercept = False
        elif piece.isidentifier():
            slopes.append(piece)
        else:
            raise FormulaError(
                f"Random-effect term `{text}`: `{piece}` is not supported; random slopes must be "
                "plain numeric column names (compute transformed columns first)."
            )
    if not intercept and not slopes:
        raise FormulaError(f"Random-effect term `{text}` has no coefficient.")
    return intercept, tuple(slopes)


def _parse_group(group: str, text: str) -> list[str]:
    """Expand ``a/b/c`` into ``["a", "a:b", "a:b:c"]``; validate names."""
    levels = [g.strip() for g in group.split("/")]
    for part in levels:
        for name in part.split(":"):
            if not name.strip().isidentifier():
                raise FormulaError(
                    f"Random-effect term `{text}`: grouping factor `{name.strip()}` must be a "
                    "column name."
                )
    expanded = []
    for i in range(len(levels)):
        expanded.append(":".join(":".join(n.strip() for n in lv.split(":")) for lv in levels[: i + 1]))
    return expanded


def _parse_bar_term(inner: str, text: str, relmat: str | None) -> list[RandomTerm]:
    match = _RANDOM_BAR.match(inner.strip())
    if match is None:
        raise FormulaError(f"Cannot parse random-effect term `{text}`; expected `(1 | group)`.")
    intercept, slopes = _parse_random_lhs(match["lhs"], text)
    correlated = match["bar"] == "|"
    groups = _parse_group(match["group"], text)
    if relmat is not None and len(groups) > 1:
        raise FormulaError(f"`{text}`: relmat() takes a single grouping factor, not a nested one.")
    return [RandomTerm(g, intercept, slopes, correlated, relmat, text) for g in groups]


def _parse_relmat(term: str) -> list[RandomTerm]:
    body = term[len("relmat") :].strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise FormulaError(f"Cannot parse `{term}`; expected `relmat(1 | group, K = name)`.")
    args = _split_top_level(body[1:-1], ",")
    if len(args) not in (2, 3):
        raise FormulaError(f"`{term}`: expected `relmat(1 | group, K = name)` or `relmat(1 | group, K = name, levels = name)`.")
    named: dict[str, str] = {}
    for kw in args[1:]:
        m = re.match(r"^\s*(K|levels)\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", kw)
        if m is None:
            raise FormulaError(
                f"`{term}`: `{kw.strip()}` is not understood; give `K = <name>` and optionally "
                "`levels = <name>` (bare names)."
            )
        named[m.group(1)] = m.group(2)
    if "K" not in named:
        raise FormulaError(f"`{term}`: the relatedness matrix must be given as `K = <name>`.")
    terms = _parse_bar_term("(" + args[0].strip() + ")", term, named["K"])
    return [RandomTerm(t.group, t.intercept, t.slopes, t.correlated, t.relmat, t.text, named.get("levels"))
            for t in terms]


_TREE_VALUE = re.compile(r"""^\s*tree\s*=\s*(?P<v>[A-Za-z_][A-Za-z0-9_]*|'[^']*'|"[^"]*")\s*$""")


def _parse_phylo(term: str) -> list[RandomTerm]:
    """``phylo(1 | species, tree = name)`` (drmTMB's spelling): relmat with K = phylo_corr(tree)."""
    body = term[len("phylo") :].strip()
    expected = "expected `phylo(1 | species, tree = name)` (a bare name, or a quoted Newick file path)"
    if not (body.startswith("(") and body.endswith(")")):
        raise FormulaError(f"Cannot parse `{term}`; {expected}.")
    args = _split_top_level(body[1:-1], ",")
    match = _TREE_VALUE.match(args[1]) if len(args) == 2 else None
    if match is None:
        raise FormulaError(f"`{term}`: {expected}.")
    terms = _parse_bar_term("(" + args[0].strip() + ")", term, match["v"])
    if len(terms) != 1 or not terms[0].intercept or terms[0].slopes:
        raise FormulaError(f"`{term}`: phylo() takes a random intercept of one grouping factor, `(1 | species)`.")
    t = terms[0]
    return [RandomTerm(t.group, t.intercept, t.slopes, t.correlated, t.relmat, t.text, None, "tree")]


@dataclass(frozen=True)
class ParsedMu:
    response: str
    fixed_rhs: str
    meta_v: MetaV | None
    random_terms: tuple[RandomTerm, ...]


def _parse_mu(lhs: str, rhs: str, text: str) -> ParsedMu:
    if not lhs:
        raise FormulaError(f"The mu formula `{text}` needs a response on its left side.")
    meta_v: MetaV | None = None
    random_terms: list[RandomTerm] = []
    fixed: list[str] = []
    for raw in _split_top_level(rhs, "+"):
        term = raw.strip()
        if not term:
            continue
        if term.startswith(("meta_V(", "meta_known_V(")) or re.match(r"^meta_(known_)?V\s*\(", term):
            if meta_v is not None:
                raise FormulaError(f"Formula `{text}` has two meta_V() markers; give one.")
            meta_v = _parse_meta_v(term)
        elif term.startswith("(") and "|" in term and _split_top_level(term[1:-1], "|") != [term[1:-1]]:
            random_terms.extend(_parse_bar_term(term, term, None))
        elif re.match(r"^relmat\s*\(", term):
            random_terms.extend(_parse_relmat(term))
        elif re.match(r"^phylo\s*\(", term):
            random_terms.extend(_parse_phylo(term))
        elif "meta_V" in term or "meta_known_V" in term:
            raise FormulaError(f"`{term}`: meta_V() must stand alone as a term of the mu formula.")
        else:
            _reject_unsupported_special(term, f"the mu formula `{text}`", allowed=frozenset({"phylo"}))
            fixed.append(term)
    groups = [t.group for t in random_terms]
    dup = {g for g in groups if groups.count(g) > 1}
    if dup:
        raise FormulaError(
            f"Formula `{text}` has more than one random-effect term for group `{sorted(dup)[0]}`; "
            "combine them into one term."
        )
    fixed_rhs = " + ".join(fixed) if fixed else "1"
    return ParsedMu(lhs, fixed_rhs, meta_v, tuple(random_terms))


# drmTMB / glmmTMB special terms drmpy does not fit.  Names that are special whatever their
# arguments, and generic names (also numpy functions) that are special only around a bar.
UNSUPPORTED_SPECIALS = frozenset({"phylo", "spatial", "animal", "gp", "ar1", "ou", "toep", "propto",
                                  "equalto", "homdiag", "hetar1"})
UNSUPPORTED_BAR_SPECIALS = frozenset({"exp", "gau", "mat", "cs", "us", "diag", "rr", "mm", "gr"})
_CALL = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\((?P<args>.*)\)$", re.S)


def _reject_unsupported_special(term: str, where: str, allowed: frozenset[str] = frozenset()) -> None:
    """Raise a FormulaError naming ``term`` when it is a drmTMB special drmpy does not fit
    (``where`` names the formula, e.g. "the bivariate mu1 formula `y1 ~ ...`")."""
    m = _CALL.match(term.strip())
    if m is None or m["name"] in allowed:
        return
    name = m["name"]
    has_bar = _split_top_level(m["args"], "|") != [m["args"]]
    if name in UNSUPPORTED_SPECIALS or (name in UNSUPPORTED_BAR_SPECIALS and has_bar):
        raise FormulaError(
            f"`{term.strip()}` in {where}: {name}() terms are not supported there by drmpy "
            "(random effects: `(1|g)`, `(1 + x|g)`, `relmat(1|g, K = K)` in a univariate mu formula)."
        )


def _check_no_specials(dpar: str, rhs: str, text: str) -> None:
    if "meta_V" in rhs or "meta_known_V" in rhs:
        raise FormulaError(
            f"`{text}`: meta_V() belongs in the mu formula only, not in the {dpar} formula."
        )
    for raw in _split_top_level(rhs, "+"):
        term = raw.strip()
        # phylo() in a univariate model is a random effect of the mu formula (below); in a
        # bivariate model it is not supported anywhere, and the message says so first
        allowed = frozenset() if dpar in BIVARIATE_DPARS else frozenset({"phylo"})
        _reject_unsupported_special(term, f"the {dpar} formula `{text}`", allowed)
        if (term.startswith("(") and "|" in term) or term.startswith(("relmat", "phylo(")):
            raise FormulaError(
                f"`{text}`: random-effect terms such as `{term}` belong in the mu formula."
            )


def _capture_env(depth: int) -> dict[str, Any]:
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            assert frame is not None
            frame = frame.f_back
        if frame is None:
            return {}
        env = dict(frame.f_globals)
        env.update(frame.f_locals)
        return env
    finally:
        del frame


@dataclass(frozen=True, eq=False)
class Formula:
    """A set of formulas, one per distributional parameter.

    Positional strings: the one whose left side is a response is the ``mu`` formula;
    the others name their parameter on the left (``"sigma ~ habitat"``,
    ``"sd(study) ~ habitat"``).  Keywords take one- or two-sided strings
    (``sigma="~ habitat"``).  ``sigma`` defaults to ``~ 1`` and every ``sd(g)`` of a
    random-effect term to ``~ 1``.

    The namespace where the Formula is built (locals, then globals) is captured, so
    ``meta_V(V=name)`` and ``relmat(..., K=name)`` may name variables of the caller.
    """

    dpars: Mapping[str, str]
    mu: ParsedMu | None  # None for a bivariate formula (see ``locations``)
    text: Mapping[str, str]
    env: Mapping[str, Any] = field(repr=False, default_factory=dict)
    locations: Mapping[str, ParsedMu] = field(repr=False, default_factory=dict)

    def __init__(self, *formulas: str, _env_depth: int = 1, **named: str) -> None:
        collected: dict[str, tuple[str, str, str]] = {}  # dpar -> (lhs, rhs, text)

        def add(dpar: str, lhs: str, rhs: str, text: str) -> None:
            if dpar in collected:
                raise FormulaError(f"Two formulas given for `{dpar}`: `{collected[dpar][2]}` and `{text}`.")
            collected[dpar] = (lhs, rhs, text)

        for f in formulas:
            if isinstance(f, Formula):
                raise FormulaError("Formula() takes strings; pass the Formula itself to drm.fit().")
            if not isinstance(f, str):
                raise FormulaError(f"Formulas must be strings, got {type(f).__name__}.")
            lhs, rhs = _split_tilde(f)
            if not lhs:
                raise FormulaError(
                    f"One-sided formula `{f}` given positionally; name its parameter on the left "
                    "(`sigma ~ x`) or pass it as a keyword (sigma='~ x')."
                )
            if _is_dpar_name(lhs) and lhs != "mu":
                add(lhs, "", rhs, f)
            else:
                add("mu", lhs, rhs, f)
        for key, f in named.items():
            if not isinstance(f, str):
                raise FormulaError(f"Formula for `{key}` must be a string, got {type(f).__name__}.")
            if not _is_dpar_name(key):
                extra = "".join(f", {name} ({fam})" for name, fam in _FAMILY_DPARS.items())
                raise FormulaError(
                    f"Unknown distributional parameter `{key}`; use mu, sigma or sd(<group>){extra} "
                    "(bivariate: mu1, mu2, sigma1, sigma2, rho12)."
                )
            lhs, rhs = _split_tilde(f) if "~" in f else ("", f)
            if key in ("mu", "mu1", "mu2"):
                add(key, lhs, rhs, f)
            else:
                if lhs and lhs != key:
                    raise FormulaError(f"Keyword `{key}` was given formula `{f}` for `{lhs}`.")
                add(key, "", rhs, f)
        if "mu1" in collected or "mu2" in collected:
            self._init_bivariate(collected, _env_depth)
            return
        stray = [d for d in collected if d in BIVARIATE_DPARS]
        if stray:
            raise FormulaError(
                f"`{collected[stray[0]][2]}`: {stray[0]} belongs to a bivariate model, which needs "
                "mu1= and mu2= formulas."
            )
        if "mu" not in collected:
            raise FormulaError("No formula with a response (the mu formula, e.g. `yi ~ x`) was given.")
        mu_lhs, mu_rhs, mu_text = collected["mu"]
        mu = _parse_mu(mu_lhs, mu_rhs, mu_text)
        dpars: dict[str, str] = {"mu": mu.fixed_rhs}
        texts: dict[str, str] = {"mu": mu_text}
        sd_names = [n for t in mu.random_terms for n in t.sd_dpars()]
        for dpar, (_, rhs, text) in collected.items():
            if dpar == "mu":
                continue
            _check_no_specials(dpar, rhs, text)
            if dpar.startswith("sd(") and dpar not in sd_names:
                have = ", ".join(sd_names) if sd_names else "none"
                raise FormulaError(
                    f"`{text}`: there is no random-effect term for `{dpar}` in the mu formula "
                    f"(random-effect SDs in this model: {have}); add e.g. `(1|{dpar[3:-1]})`."
                )
            dpars[dpar] = rhs.strip() or "1"
            texts[dpar] = text
        dpars.setdefault("sigma", "1")
        texts.setdefault("sigma", "sigma ~ 1")
        for name in sd_names:
            dpars.setdefault(name, "1")
            texts.setdefault(name, f"{name} ~ 1")
        ordered = {"mu": dpars["mu"], "sigma": dpars["sigma"]}
        for name in _FAMILY_DPARS:  # a family's parameters (nu ~ 1) after sigma, in registration order
            if name in dpars:
                ordered[name] = dpars[name]
        for name in sd_names:
            ordered[name] = dpars[name]
        object.__setattr__(self, "dpars", ordered)
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "text", texts)
        object.__setattr__(self, "env", _capture_env(_env_depth + 1))
        object.__setattr__(self, "locations", {"mu": mu})

    def _init_bivariate(self, collected: dict, _env_depth: int) -> None:
        """mu1, mu2 (each with a response), sigma1, sigma2, rho12 (default ``~ 1``)."""
        other = [d for d in collected if d not in BIVARIATE_DPARS]
        if other:
            raise FormulaError(
                f"`{collected[other[0]][2]}`: a bivariate model (mu1, mu2) takes formulas for "
                "mu1, mu2, sigma1, sigma2 and rho12 only; give the responses as mu1='y1 ~ ...', "
                "mu2='y2 ~ ...'."
            )
        locations: dict[str, ParsedMu] = {}
        for name in ("mu1", "mu2"):
            if name not in collected:
                raise FormulaError(f"A bivariate model needs both mu1 and mu2 formulas; {name} is missing.")
            lhs, rhs, text = collected[name]
            for term in _split_top_level(rhs, "+"):
                _reject_unsupported_special(term, f"the bivariate {name} formula `{text}`")
            parsed = _parse_mu(lhs, rhs, text)
            if parsed.random_terms:
                raise FormulaError(
                    f"`{text}`: random-effect terms are not supported in bivariate models yet."
                )
            locations[name] = parsed
        if locations["mu1"].meta_v is not None and locations["mu2"].meta_v is not None:
            raise FormulaError(
                "meta_V() appears in both mu1 and mu2; give the 2n x 2n sampling covariance once."
            )
        if locations["mu1"].response == locations["mu2"].response:
            raise FormulaError(f"mu1 and mu2 have the same response `{locations['mu1'].response}`.")
        dpars = {"mu1": locations["mu1"].fixed_rhs, "mu2": locations["mu2"].fixed_rhs}
        texts = {"mu1": collected["mu1"][2], "mu2": collected["mu2"][2]}
        for name in ("sigma1", "sigma2", "rho12"):
            if name in collected:
                _, rhs, text = collected[name]
                _check_no_specials(name, rhs, text)
                dpars[name] = rhs.strip() or "1"
                texts[name] = text
            else:
                dpars[name] = "1"
                texts[name] = f"{name} ~ 1"
        object.__setattr__(self, "dpars", dpars)
        object.__setattr__(self, "mu", None)
        object.__setattr__(self, "text", texts)
        object.__setattr__(self, "env", _capture_env(_env_depth + 2))
        object.__setattr__(self, "locations", locations)

    def with_dpar_defaults(self, defaults: Mapping[str, str]) -> "Formula":
        """This formula with ``dpar ~ rhs`` added for each family parameter of ``defaults`` it
        does not have (``{"nu": "1"}``), in parameter order; self when nothing is added."""
        missing = {d: rhs for d, rhs in defaults.items() if d not in self.dpars}
        if not missing:
            return self
        if self.mu is None:
            raise FormulaError("Family parameters are for univariate models; this formula is bivariate.")
        unknown = [d for d in missing if d not in _FAMILY_DPARS]
        if unknown:
            raise FormulaError(f"`{unknown[0]}` is not a registered family parameter.")
        merged = dict(self.dpars)
        merged.update(missing)
        texts = dict(self.text)
        texts.update({d: f"{d} ~ {rhs}" for d, rhs in missing.items()})
        ordered = {"mu": merged["mu"], "sigma": merged["sigma"]}
        ordered.update({d: merged[d] for d in _FAMILY_DPARS if d in merged})
        ordered.update({d: rhs for d, rhs in merged.items() if d not in ordered})
        new = object.__new__(Formula)
        object.__setattr__(new, "dpars", ordered)
        object.__setattr__(new, "mu", self.mu)
        object.__setattr__(new, "text", {d: texts[d] for d in ordered})
        object.__setattr__(new, "env", self.env)
        object.__setattr__(new, "locations", self.locations)
        return new

    def without_dpars(self, names) -> "Formula":
        """This formula without the parameters ``names`` (the robust fit's normal model drops
        the family parameters); self when it has none of them."""
        drop = [d for d in names if d in self.dpars]
        if not drop:
            return self
        if "mu" in drop or "sigma" in drop:
            raise FormulaError("without_dpars(): mu and sigma cannot be dropped.")
        new = object.__new__(Formula)
        object.__setattr__(new, "dpars", {d: rhs for d, rhs in self.dpars.items() if d not in drop})
        object.__setattr__(new, "mu", self.mu)
        object.__setattr__(new, "text", {d: t for d, t in self.text.items() if d not in drop})
        object.__setattr__(new, "env", self.env)
        object.__setattr__(new, "locations", self.locations)
        return new

    @property
    def family_dpars(self) -> tuple[str, ...]:
        """The registered family parameters this formula has formulas for (``("nu",)``)."""
        return tuple(d for d in self.dpars if d in _FAMILY_DPARS)

    @property
    def is_bivariate(self) -> bool:
        return self.mu is None

    @property
    def responses(self) -> tuple[str, ...]:
        return tuple(p.response for p in self.locations.values())

    @classmethod
    def coerce(cls, formula: "Formula | str", _env_depth: int = 2) -> "Formula":
        """A Formula as is; a plain string as the ``mu`` formula alone."""
        if isinstance(formula, Formula):
            return formula
        if isinstance(formula, str):
            return cls(formula, _env_depth=_env_depth + 1)
        raise FormulaError(f"Expected a drm.Formula or a formula string, got {type(formula).__name__}.")

    @property
    def response(self) -> str:
        if self.mu is None:
            raise FormulaError("A bivariate formula has two responses; see `responses`.")
        return self.mu.response

    @property
    def meta_v(self) -> MetaV | None:
        for parsed in self.locations.values():
            if parsed.meta_v is not None:
                return parsed.meta_v
        return None

    @property
    def random_terms(self) -> tuple[RandomTerm, ...]:
        return () if self.mu is None else self.mu.random_terms

    def key(self) -> tuple:
        """Hashable identity of the formula text (not of the captured namespace)."""
        return tuple(sorted(self.text.items()))

    def __repr__(self) -> str:
        inner = ", ".join(repr(self.text[d]) for d in self.text)
        return f"Formula({inner})"
