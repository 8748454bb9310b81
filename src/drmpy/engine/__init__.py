"""Stage 2, model spec -> estimates.

Takes a model design from :mod:`drmpy.model` and gives a raw fit
(:class:`~drmpy.engine.program.RawFit`: the parameter vector on the link scales, the
log-likelihood, the covariance of the estimates and the optimiser's status).
:mod:`~drmpy.engine.likelihood` holds the exact Gaussian likelihoods per covariance
structure (diag, block, woodbury, pair, dense), :mod:`~drmpy.engine.optimize` the
trust-region Newton loop, :mod:`~drmpy.engine.program` the structure choice, start values
and the compiled single-fit program, :mod:`~drmpy.engine.bivariate` the arrays and starts
of the two-response model, :mod:`~drmpy.engine.batch` the vmapped many-group programs and
:mod:`~drmpy.engine.small_linalg` the LAPACK-free linear algebra they need.  This stage
imports :mod:`drmpy.model`, never :mod:`drmpy.results`.
"""
