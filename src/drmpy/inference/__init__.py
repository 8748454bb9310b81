"""Inference after the fit: what the estimates and the fitted variances imply.

Takes a fit result (:class:`~drmpy.results.fit.DrmFit`) and gives intervals, predictions
with their uncertainty and tests.  :mod:`~drmpy.inference.marginal` holds the shared
quantities every later stage (heterogeneity, plots, bias) builds on: the fitted marginal
covariance ``S`` of the responses and the generalised-least-squares information
``X' S^-1 X`` of the location coefficients at the fitted variance parameters.
"""
