"""Effect sizes and their sampling (co)variances: what primary studies report -> ``yi``, ``vi``, V, K.

Takes study summaries (means, SDs and sample sizes; 2x2 counts; correlations; proportions;
incidence counts and person-times) and a phylogeny, and gives what :func:`drmpy.fit` needs:
:func:`~drmpy.effects.effect_size.effect_size` (metafor's ``escalc``),
:func:`~drmpy.effects.covariance.sampling_covariance` (metafor's ``vcalc``),
:func:`~drmpy.effects.covariance.shared_control_covariance` (multi-arm studies) and
:func:`~drmpy.effects.phylogeny.phylo_corr` (ape's ``vcv(tree, corr = TRUE)``).
This stage imports nothing from the engine: its outputs are plain frames and matrices.
"""
