"""Many fits at once: batches of groups, simulated responses and the parametric bootstrap.

Takes a formula and a long data frame (:func:`~drmpy.simulation.batch.fit_batch`: one fit per
level of a grouping column) or a fitted model (:mod:`~drmpy.simulation.simulate`: draws from
its marginal distribution; :mod:`~drmpy.simulation.bootstrap`: refits to such draws); gives
long tables of estimates per group or replicate.  The compiled programs live in
:mod:`drmpy.engine.batch`.
"""
