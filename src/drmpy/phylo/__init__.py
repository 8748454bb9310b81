"""Phylogenetic meta-analysis in linear time: the tree route of ``phylo(1 | species, tree=)``.

Under Brownian motion the phylogenetic covariance of species is a *tree covariance*: the
covariance of two tips is the length of the path they share from the root.  Hanging every
effect size under its species tip as a pendant edge of length ``sigma_i^2 + v_i`` (and the
non-phylogenetic species effect as an edge of length ``sigma_s^2`` between them) makes the
whole marginal covariance ``S = tau^2 Z C Z' + sigma_s^2 Z Z' + diag(sigma_i^2 + v_i)`` a tree
covariance too, so ``log|S|`` and the Gram matrix ``B' S^-1 B`` of ``B = [X, y]`` follow from
one pass over the tree from the tips to the root (Ho and Ane 2014, Syst Biol 63:397; R's
phylolm): O(nodes x columns^2) time and O(nodes x columns) memory, exact, no matrix formed.

* :mod:`~drmpy.phylo.topology`: a tree and the observations' species -> static index arrays
  (parents, pendant-edge kinds, tip-to-root levels), built once per fit with numpy.
* :mod:`~drmpy.phylo.likelihood`: the pass itself in JAX (pure functions of arrays), level by
  level, vectorised within each level; derivatives by autodiff.
"""
