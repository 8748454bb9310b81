"""The tree pass: ``log|S|`` and ``B' S^-1 B`` for a tree covariance S, in O(nodes).

For a subtree hanging from the top of its edge, with covariance ``V`` among its
observations, carry ``p = 1'V^-1 1`` and ``x = 1'V^-1 B`` (a row of B's width).  An
observation with pendant edge ``t`` starts with ``p = 1/t``, ``x = B_i / t``.  A node adds up
its children (their covariances are independent blocks), then its own edge of length t
adds ``t 11'`` to V, and by Sherman-Morrison

    p <- p / (1 + t p),   x <- x / (1 + t p),
    B'V^-1B <- B'V^-1B - t x x' / (1 + t p),   log|V| <- log|V| + log(1 + t p)

(Ho and Ane 2014).  ``B'V^-1B`` and ``log|V|`` are never needed per node: at the root they
are sums over nodes of ``B_i B_i'/t_i`` and ``log t_i`` (observations) and of the two
corrections above (every other node), so only ``p`` and ``x`` travel up the tree.

Levels are processed tips to root; within a level every node is independent, so a level is
one vectorised step (several for a level wider than the step table).  The pass is a single
``fori_loop`` over the rows of the step table, so its program is small whatever the tree's
shape; derivatives by forward-mode autodiff through the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .topology import TreeTopology

__all__ = ["TreeStatic", "TreeArrays", "tree_static", "tree_arrays", "edge_lengths", "tree_gram"]


@dataclass(frozen=True)
class TreeStatic:
    """The static (hashable) part of a tree pass: its sizes and, inside a model, which
    random terms the tree carries: ``phylo_term``/``species_term`` are the positions of the
    ``phylo()`` term and of the non-phylogenetic species term (None if absent) among the
    model's random terms.  (The step table is an array: trees of the same sizes share one
    compiled program.)
    """

    n_obs: int
    n_species: int
    n_nodes: int
    phylo_term: int = 0
    species_term: int | None = None


class TreeArrays(NamedTuple):
    """Device arrays of a :class:`~drmpy.phylo.topology.TreeTopology`."""

    parent: jax.Array  # (n_nodes,) int
    phylo_length: jax.Array  # (n_nodes - n_obs - n_species,) l_e of the phylogeny nodes, 0 at the root
    species_depth: jax.Array  # (n_species,) depth_s (1 without the correlation scaling)
    row_scale: jax.Array  # (n_obs,) sqrt(depth_s(i))
    species_level: jax.Array  # (n_species,) int level of the species term for each species (0 if none)
    steps: jax.Array  # (n_steps, width) int: node numbers of each step of the pass


def tree_static(topology: TreeTopology, phylo_term: int = 0, species_term: int | None = None) -> TreeStatic:
    return TreeStatic(topology.n_obs, topology.n_species, topology.n_nodes, phylo_term, species_term)


def tree_arrays(topology: TreeTopology, species_level: np.ndarray | None = None) -> TreeArrays:
    """Move a topology's arrays to the device (float64 lengths, int32 node numbers)."""
    first_phylo = topology.n_obs + topology.n_species
    if species_level is None:
        species_level = np.zeros(topology.n_species, dtype=np.int64)
    def put(a, dtype):  # a transfer, not a compiled conversion (see engine.program._device)
        return jax.device_put(np.asarray(a, dtype=dtype))

    return TreeArrays(
        parent=put(topology.parent, np.int32),
        phylo_length=put(topology.branch_length[first_phylo:], np.float64),
        species_depth=put(topology.species_depth[topology.n_obs:first_phylo], np.float64),
        row_scale=put(topology.row_scale, np.float64),
        species_level=put(species_level, np.int32),
        steps=put(topology.steps, np.int32),
    )


def edge_lengths(tau2, species2, row_variance, ta: TreeArrays) -> jax.Array:
    """Edge length of every node of the scaled tree T, in node order:

    observation i: ``(sigma_i^2 + v_i) depth_s(i)`` (``row_variance`` = ``sigma_i^2 + v_i``);
    species node s: ``sigma_s^2 depth_s`` (``species2``: a scalar or one value per species);
    phylogeny node: ``tau^2 l_e`` (the root: 0).
    """
    species2 = jnp.broadcast_to(jnp.asarray(species2, row_variance.dtype), ta.species_depth.shape)
    return jnp.concatenate([row_variance * ta.row_scale**2, species2 * ta.species_depth,
                            tau2 * ta.phylo_length])


def tree_gram(t: jax.Array, B: jax.Array, ta: TreeArrays, ts: TreeStatic):
    """``(log|S|, B' S^-1 B)`` for ``S = Dz T Dz`` with T the tree covariance of edge lengths
    ``t`` (:func:`edge_lengths`) and ``Dz = diag(1 / row_scale)``; B is (n_obs, k).

    Observation edges must be positive; any other edge may be 0 (an identity step).
    """
    n_obs = ts.n_obs
    n_nodes = ts.n_nodes
    k = B.shape[1]
    Bs = B * ta.row_scale[:, None]
    t_obs = t[:n_obs]
    inv = 1.0 / t_obs
    x_obs = Bs * inv[:, None]
    gram = x_obs.T @ Bs
    logdet = jnp.sum(jnp.log(t_obs)) - 2.0 * jnp.sum(jnp.log(ta.row_scale))
    # accumulators of the nodes above the observations (inner node j is node n_obs + j),
    # + the root's sink (n_inner) and the always-empty padding slot (n_inner + 1)
    n_inner = n_nodes - n_obs
    above = ta.parent[:n_obs] - n_obs
    acc_p = jnp.zeros((n_inner + 2,), B.dtype).at[above].add(inv)
    acc_x = jnp.zeros((n_inner + 2, k), B.dtype).at[above].add(x_obs)
    t_ext = jnp.concatenate([t[n_obs:], jnp.zeros((2,), t.dtype)])
    parent_ext = jnp.concatenate([ta.parent[n_obs:] - n_obs, jnp.asarray([n_inner, n_inner + 1], jnp.int32)])
    steps = ta.steps - n_obs  # padding n_nodes + 1 -> n_inner + 1

    def step(nodes_p, nodes_x, nodes_t, parents, state):
        acc_p, acc_x, gram, logdet = state
        den = 1.0 + nodes_t * nodes_p
        scaled = nodes_x * (nodes_t / den)[:, None]
        gram = gram - scaled.T @ nodes_x
        logdet = logdet + jnp.sum(jnp.log(den))
        acc_p = acc_p.at[parents].add(nodes_p / den)
        acc_x = acc_x.at[parents].add(nodes_x / den[:, None])
        return acc_p, acc_x, gram, logdet

    def body(r, state):
        idx = steps[r]
        return step(state[0][idx], state[1][idx], t_ext[idx], parent_ext[idx], state)

    state = jax.lax.fori_loop(0, steps.shape[0], body, (acc_p, acc_x, gram, logdet))
    _, _, gram, logdet = state
    return logdet, 0.5 * (gram + gram.T)

