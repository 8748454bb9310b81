"""Many groups at once: the same model fitted to every level of a grouping column.

Takes a formula, a long data frame and the name of a grouping column
(:func:`~drmpy.batch.batch.fit_batch`); gives one long table of estimates, standard errors,
log-likelihoods and convergence status per group.  Models without random effects are fitted
by :mod:`~drmpy.batch.batch`, models with one random intercept ``(1|g)`` per group by
:mod:`~drmpy.batch.batch_random`.  Designs are materialised once on the whole data; the
compiled many-group programs live in :mod:`drmpy.engine.batch` and
:mod:`drmpy.engine.batch_random`.  A later stage: it imports model/ and engine/ at module
level, nothing of results/ or the other later stages.
"""
