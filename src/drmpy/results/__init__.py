"""Stage 3, raw fit -> what a user reads.

Takes a model design and a raw fit; gives the result objects
(:class:`~drmpy.results.fit.DrmFit`, :class:`~drmpy.results.bivariate.BivariateFit`, both on
the shared :class:`~drmpy.results.fit.FitResult` base) with named estimates, standard errors,
fitted values and predictions, the printed summary (:mod:`~drmpy.results.summary`), the
convergence and data checks (:mod:`~drmpy.results.checks`) and the random effects' SDs and
conditional modes (:mod:`~drmpy.results.random_effects`).  Methods that belong to later
stages (simulation, inference, heterogeneity, plots, bias) import those stages inside the
method, so nothing here loads them at import time.
"""
