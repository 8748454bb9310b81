"""Many fits from one fit: simulated responses and the parametric bootstrap.

Takes a fitted model (:mod:`~drmpy.simulation.simulate`: draws from its marginal
distribution; :mod:`~drmpy.simulation.bootstrap`: refits to such draws); gives arrays of
simulated responses or long tables of estimates per replicate.  The compiled refit programs
live in :mod:`drmpy.engine.batch`; one fit per level of a grouping column is
:mod:`drmpy.batch` (:func:`~drmpy.batch.batch.fit_batch`).
"""
