"""Robust random effects with known V (issue 26): the likelihoods and the fitting program of the
non-Gaussian families (:mod:`drmpy.families`: Student-t, normal mixture), engine level.

:mod:`~drmpy.robust.likelihood` evaluates the exact marginal log-likelihood (the t marginal by
quadrature over its mixing variable, the mixture in closed form; a Gaussian ``(1|study)``
effect by adaptive Gauss-Hermite quadrature per study); :mod:`~drmpy.robust.program` maximises
it with the engine's exact-Hessian trust-region Newton solver, compiled.
"""
