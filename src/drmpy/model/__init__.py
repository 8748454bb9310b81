"""Stage 1, formula -> model spec.

Takes the user's formulas (:class:`~drmpy.model.formula.Formula`), a data frame (pandas or
polars, read through :mod:`~drmpy.model.frames`) and the known sampling (co)variance named
by ``meta_V``; gives a model design (:class:`~drmpy.model.design.ModelDesign`, or
:class:`~drmpy.model.bivariate.BivariateDesign` for two responses): the retained rows, the
response, one fixed-effect design per distributional parameter, the random-effect designs
and the validated known V (:mod:`~drmpy.model.known_v`).  Nothing here knows about
likelihoods or results; this stage imports only :mod:`drmpy.errors`.
"""
