"""Stage 2, model spec -> estimates.

Takes a model design from :mod:`drmpy.model` and gives a raw fit
(:class:`~drmpy.engine.program.RawFit`: the parameter vector on the link scales, the
log-likelihood, the covariance of the estimates and the optimiser's status).
:mod:`~drmpy.engine.structures` holds the covariance structures (diag, block, woodbury,
intercepts, dense, tree, pair; one module each) and their registry,
:mod:`~drmpy.engine.likelihood` what they share and the exact Gaussian objectives,
:mod:`~drmpy.engine.optimize` the
trust-region Newton loop, :mod:`~drmpy.engine.program` the structure choice, start values
and the compiled single-fit program, :mod:`~drmpy.engine.bivariate` the arrays and starts
of the two-response model, :mod:`~drmpy.engine.batch` the vmapped many-group programs and
:mod:`~drmpy.engine.small_linalg` the LAPACK-free linear algebra they need.  This stage
imports :mod:`drmpy.model`, never :mod:`drmpy.results`.
"""
