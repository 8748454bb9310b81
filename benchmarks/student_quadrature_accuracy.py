"""Accuracy of the t marginal's quadrature (drmpy.families.student_marginal) against scipy's quad.

On 420 points (nu 0.3 to 1e6, sigma/sqrt(v) 1e-3 to 1e3, residuals 0 to 25 total SDs) the
relative error of the density ``f(r)`` of ``r = u + e``, ``u ~ t_nu(0, sigma)``, ``e ~ N(0, v)``,
for the number of fine trapezoid nodes used by fits (256, ``FINE_NODES``), by the outlier test's
refits (``drmpy.robust.batch.REFIT_NODES``) and others, through
:func:`drmpy.robust.student_derivatives.student_row_derivatives` (the refits' kernel; with 256
nodes it reproduces ``student_normal_logpdf``).  The oracle integrates over u with quad
(tests/robust/test_student_marginal.py's ``oracle_logpdf``; about 2 minutes).

    PYTHONPATH=src python3 benchmarks/student_quadrature_accuracy.py > benchmarks/student_quadrature_accuracy.out
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "robust"))

from test_student_marginal import oracle_logpdf  # noqa: E402

from drmpy.families.student_marginal import FINE_NODES, student_normal_logpdf  # noqa: E402
from drmpy.robust.batch import REFIT_NODES  # noqa: E402
from drmpy.robust.student_derivatives import student_row_derivatives  # noqa: E402

NUS = (0.3, 0.5, 1.0, 2.0, 4.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e5, 1e6)
SIGMAS = (1e-3, 0.03, 0.3, 1.0, 3.0, 30.0, 1e3)  # sigma / sqrt(v)
ZS = (0.0, 1.0, 3.0, 8.0, 25.0)  # r in total SDs


def main() -> None:
    grid = np.array(list(itertools.product(NUS, SIGMAS, ZS)))
    nu, s, z = grid.T
    v = np.full_like(nu, 0.7)
    sigma = s * np.sqrt(v)
    r = z * np.sqrt(v + sigma**2)
    want = np.array([oracle_logpdf(*a) for a in zip(r, v, sigma, nu)])
    print(f"{len(grid)} points; relative error of the density against quad")
    value = np.asarray(jax.jit(student_normal_logpdf)(r, v, sigma, nu))
    rel = np.abs(np.expm1(value - want))
    print(f"student_normal_logpdf ({FINE_NODES} nodes): worst {rel.max():.2e}, median {np.median(rel):.1e}")
    kernel = jax.jit(student_row_derivatives, static_argnums=4)
    for nodes in sorted({128, 160, REFIT_NODES, FINE_NODES, 512}):
        got = np.asarray(kernel(r, v, np.log(sigma), np.log(nu), nodes).value)
        rel = np.abs(np.expm1(got - want))
        w = int(np.argmax(rel))
        tag = " (fits)" if nodes == FINE_NODES else " (outlier-test refits)" if nodes == REFIT_NODES else ""
        print(f"student_row_derivatives {nodes:4d} nodes{tag}: worst {rel[w]:.2e} (nu {nu[w]:g}, "
              f"sigma/sqrt(v) {s[w]:g}, z {z[w]:g}), median {np.median(rel):.1e}, above 1e-9: {int(np.sum(rel > 1e-9))}")


if __name__ == "__main__":
    main()
