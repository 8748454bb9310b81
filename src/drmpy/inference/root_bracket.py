"""Illinois regula falsi on a bracket: the root step of the profile-interval searches.

Both profile searches (:mod:`drmpy.inference.profile`, inside a compiled ``while_loop``;
:mod:`drmpy.inference.robust_profile`, a numpy loop over batched refits) find where the
profile criterion ``g(x) = 2 (l_hat - l_p(x)) - q`` crosses 0 between an inside point
(``g < 0``) and an outside point (``g >= 0``).  False position replaces the end on the side of
the new point's sign; when the same end is kept twice in a row its ``g`` is halved (the
Illinois rule, Dowell and Jarratt 1971), which keeps convergence superlinear where plain false
position stalls on a convex ``g``.  The functions work elementwise on lanes, with numpy or JAX
arrays (``jnp.where`` accepts both), and ``lo``/``hi`` may be in either order.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["Bracket", "false_position", "illinois_update", "illinois_roots"]


class Bracket(NamedTuple):
    """Per lane: the inside end ``lo`` (``g_lo < 0``), the outside end ``hi`` (``g_hi >= 0``)
    and which end the last update kept (+1 ``hi``, -1 ``lo``, 0 none yet)."""

    lo: Any  # numpy or JAX arrays, one entry per lane
    g_lo: Any
    hi: Any
    g_hi: Any
    side_kept: Any


def false_position(b: Bracket):
    """The false-position point of the bracket, or its midpoint where that point is not inside
    the bracket (non-finite, or outside by rounding)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # numpy lanes: 0/0 becomes the midpoint
        falsi = b.hi - b.g_hi * (b.hi - b.lo) / (b.g_hi - b.g_lo)
    width = jnp.abs(b.hi - b.lo)
    inner = jnp.abs(falsi - b.lo) + jnp.abs(b.hi - falsi) <= width * (1 + 1e-12)
    return jnp.where(inner, falsi, 0.5 * (b.lo + b.hi))


def illinois_update(b: Bracket, x, g, bracketed) -> Bracket:
    """The bracket after evaluating ``g`` at ``x``: ``x`` replaces ``lo`` where ``g < 0``, else
    ``hi``.  Where the lane was ``bracketed`` before this evaluation (a real ``hi``), the end
    kept for the second time in a row has its ``g`` halved (Illinois); elsewhere (still
    bracketing outward) no end counts as kept."""
    inside = g < 0
    kept = jnp.where(inside, 1, -1)  # +1: hi kept, -1: lo kept
    halve = bracketed & (kept == b.side_kept)
    lo = jnp.where(inside, x, b.lo)
    g_lo = jnp.where(inside, g, b.g_lo)
    hi = jnp.where(inside, b.hi, x)
    g_hi = jnp.where(inside, b.g_hi, g)
    g_hi = jnp.where(halve & inside, 0.5 * g_hi, g_hi)
    g_lo = jnp.where(halve & ~inside, 0.5 * g_lo, g_lo)
    return Bracket(lo, g_lo, hi, g_hi, jnp.where(bracketed, kept, 0))


def illinois_roots(evaluate: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                   lo: np.ndarray, g_lo: np.ndarray, hi: np.ndarray, g_hi: np.ndarray,
                   tol: float, max_iter: int, g_tol: float = 1e-10,
                   active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Roots of ``g`` on brackets ``[lo, hi]`` (``g_lo < 0 <= g_hi``), all lanes at once.

    ``evaluate(x, active) -> (g, ok)`` evaluates every lane at ``x`` (lanes not ``active`` may be
    ignored); a lane whose evaluation is not ``ok`` fails.  A lane is done when its bracket is
    narrower than ``tol`` (root: the final false-position point) or ``|g| <= g_tol`` (root: that
    point).  Returns ``(root, code)`` per lane: code 0 found, 2 evaluation failed (root NaN), 3
    ``max_iter`` reached (root: the final false-position point).  ``active``: the lanes to
    solve (default all); the others keep code 3 and a NaN root, and are still passed to
    ``evaluate`` (at ``lo``) so that a batched evaluation keeps its shape."""
    lo, g_lo, hi, g_hi = (np.asarray(a, dtype=np.float64) for a in (lo, g_lo, hi, g_hi))
    b = Bracket(lo, g_lo, hi, g_hi, np.zeros(lo.shape, dtype=np.int64))
    n = len(b.lo)
    root = np.full(n, np.nan)
    code = np.full(n, 3)
    running = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool).copy()
    solved = running.copy()
    for it in range(max_iter + 1):
        narrow = running & (np.abs(b.hi - b.lo) <= tol)
        code[narrow] = 0
        running &= ~narrow
        if not running.any() or it == max_iter:
            break
        x = np.where(running, np.asarray(false_position(b)), b.lo)
        g, ok = evaluate(x, running.copy())
        g, ok = np.asarray(g, dtype=np.float64), np.asarray(ok, dtype=bool)
        failed = running & ~ok
        code[failed] = 2
        hit = running & ok & (np.abs(g) <= g_tol)
        root[hit], code[hit] = x[hit], 0
        step = running & ok & ~hit
        new = illinois_update(b, x, np.where(step, g, 0.0), True)
        b = Bracket(*(np.where(step, np.asarray(a_new), a_old) for a_new, a_old in zip(new, b)))
        running &= ~(failed | hit)
    settle = solved & (((code == 0) & np.isnan(root)) | (code == 3))
    root[settle] = np.asarray(false_position(b))[settle]
    return root, code
