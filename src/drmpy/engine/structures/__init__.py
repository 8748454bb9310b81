"""The covariance structures, one per module, and their registry.

Every structure is a :class:`~drmpy.engine.structures.base.CovarianceStructure`: it says when
it applies to a design, builds its own arrays and evaluates ``(log|S|, B'S^-1B)`` as a pure
JAX function.  The registry's order is the automatic choice: the first structure (among those
marked ``automatic``) that applies is taken, cheapest exact first:

* ``tree``: a phylo() term over many species, by the linear-time tree pass (drmpy.phylo);
* ``diag``: a diagonal V without random effects, O(n);
* ``pair``: a bivariate model with V block-diagonal by study, O(studies);
* ``intercepts``: one random intercept and a diagonal V, O(n) (never automatic: the deletion
  refits and the grouped batch use it);
* ``block``: S block-diagonal by clusters of at most 256 rows;
* ``woodbury``: a diagonal V with random effects that do not nest;
* ``dense``: anything, S factored in full (the oracle).

``control={"structure": name}`` forces one by name (:func:`structure_names` lists them).
Adding a structure is one module with a ``CovarianceStructure`` subclass plus one
:func:`register` call (below, or in the caller's code).
"""

from __future__ import annotations

from .base import CovarianceStructure
from .block import Block
from .dense import Dense
from .diag import Diag
from .intercepts import Intercepts
from .pair import Pair
from .tree import Tree
from .woodbury import Woodbury

__all__ = ["CovarianceStructure", "register", "unregister", "get_structure", "structure_names",
           "registered"]

_REGISTRY: dict[str, CovarianceStructure] = {}


def register(structure: CovarianceStructure, before: str | None = None) -> None:
    """Add ``structure`` to the registry under ``structure.name``: last in the automatic
    order, or just before the structure named ``before``.  A name is registered once."""
    name = structure.name
    if not name or name in _REGISTRY:
        raise ValueError(f"a covariance structure needs a new name, got {name!r}")
    if before is None:
        _REGISTRY[name] = structure
        return
    if before not in _REGISTRY:
        raise ValueError(f"no covariance structure {before!r} to register {name!r} before")
    items = list(_REGISTRY.items())
    at = [n for n, _ in items].index(before)
    _REGISTRY.clear()
    _REGISTRY.update(items[:at] + [(name, structure)] + items[at:])


def unregister(name: str) -> None:
    """Remove the structure ``name`` (for tests that register a structure of their own)."""
    del _REGISTRY[name]


def get_structure(name: str) -> CovarianceStructure:
    """The registered structure ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown covariance structure {name!r}") from None


def registered() -> tuple[CovarianceStructure, ...]:
    """Every registered structure, in the order of the automatic choice."""
    return tuple(_REGISTRY.values())


def structure_names() -> tuple[str, ...]:
    """Names ``control={"structure": ...}`` accepts, in registry order."""
    return tuple(_REGISTRY)


# the automatic choice, cheapest exact first
for _structure in (Tree(), Diag(), Pair(), Intercepts(), Block(), Woodbury(), Dense()):
    register(_structure)
