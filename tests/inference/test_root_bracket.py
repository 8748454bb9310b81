"""The Illinois regula-falsi root search shared by the profile searches, against
scipy.optimize.brentq on convex, concave, flat-sided and steep functions, lanes at once."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from drmpy.inference.root_bracket import Bracket, false_position, illinois_roots, illinois_update

# (g, inside end, outside end): g(inside) < 0 <= g(outside); ends in either order
CASES = [
    (lambda x: np.exp(x) - 3.0, 0.0, 4.0),  # convex: plain false position stalls on one side
    (lambda x: 1.0 - 4.0 / (1.0 + x), 0.5, 20.0),  # concave
    (lambda x: x**5 - 0.3, 0.0, 1.0),  # flat near the root's left
    (lambda x: np.tanh(50.0 * (x - 0.2)), -1.0, 1.0),  # steep, nearly a step
    (lambda x: 2.0 * (x**2 - 1.5), 0.0, -3.0),  # outside end below the inside end
]


def test_roots_match_brentq_lanes_at_once():
    fs = [f for f, _, _ in CASES]
    lo = np.array([a for _, a, _ in CASES])
    hi = np.array([b for _, _, b in CASES])
    calls = []

    def evaluate(x, active):
        calls.append(active.sum())
        return np.array([f(xi) for f, xi in zip(fs, x)]), np.ones(len(x), dtype=bool)

    g_lo = np.array([f(a) for f, a in zip(fs, lo)])
    g_hi = np.array([f(b) for f, b in zip(fs, hi)])
    root, code = illinois_roots(evaluate, lo, g_lo, hi, g_hi, tol=1e-12, max_iter=100)
    want = [brentq(f, min(a, b), max(a, b), xtol=1e-14) for f, a, b in CASES]
    np.testing.assert_array_equal(code, 0)
    np.testing.assert_allclose(root, want, rtol=0, atol=1e-10)
    assert len(calls) < 60  # superlinear: plain false position needs hundreds on the convex case


def test_failed_lanes_and_inactive_lanes():
    """A lane whose evaluation fails gets code 2 and NaN; an inactive lane is left alone."""
    f = CASES[0][0]
    lo, hi = np.zeros(3), np.full(3, 4.0)

    def evaluate(x, active):
        ok = np.array([True, False, True])
        return f(x), ok | ~active

    root, code = illinois_roots(evaluate, lo, f(lo), hi, f(hi), tol=1e-10, max_iter=50,
                                active=np.array([True, True, False]))
    assert code[0] == 0 and root[0] == pytest.approx(np.log(3.0), abs=1e-9)
    assert code[1] == 2 and np.isnan(root[1])
    assert code[2] == 3 and np.isnan(root[2])


def test_illinois_halves_the_end_kept_twice():
    b = Bracket(np.array(0.0), np.array(-2.0), np.array(4.0), np.array(6.0), np.array(0))
    b1 = illinois_update(b, np.array(1.0), np.array(-1.0), True)  # lo replaced, hi kept once
    assert float(b1.g_hi) == 6.0 and int(b1.side_kept) == 1
    b2 = illinois_update(b1, np.array(2.0), np.array(-0.5), True)  # hi kept twice: halved
    assert float(b2.g_hi) == 3.0 and float(b2.lo) == 2.0
    still_bracketing = illinois_update(b, np.array(1.0), np.array(-1.0), False)
    assert int(still_bracketing.side_kept) == 0
    # the false-position point of [0, 4] with g -2, 6 is 1; a degenerate bracket gives the midpoint
    assert float(false_position(b)) == pytest.approx(1.0)
    assert float(false_position(Bracket(*(np.array(a) for a in (0.0, 1.0, 4.0, 1.0, 0))))) == 2.0
