"""The interface of a covariance structure (one implementation per module of this folder).

A structure is a way to evaluate ``log|S|`` and ``B'S^-1B`` for ``B = [X, y]``.  It says when
it applies to a design (:meth:`CovarianceStructure.refusal`), builds its own arrays
(:meth:`~CovarianceStructure.build`, carried in :attr:`drmpy.engine.likelihood.Arrays.extra`),
and evaluates the Gram matrix as a pure JAX function of arrays
(:meth:`~CovarianceStructure.gram`).  The registry (:mod:`drmpy.engine.structures`) lists the
structures in the order of the automatic choice.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar

import jax
import numpy as np

from ...model.bivariate import BivariateDesign
from ...model.design import ModelDesign, RandomDesign
from ..likelihood import Arrays, Structure

__all__ = ["CovarianceStructure"]


class CovarianceStructure:
    """One covariance structure.  Subclasses set ``name`` and override what they support.

    Class attributes:
        name: the name of ``control={"structure": name}`` and of ``Structure.kind``.
        automatic: whether the automatic choice may take it (registry order, first that applies).
        univariate / bivariate: which models it fits (bivariate: ``Structure.pairs``).
        reports_clusters: whether a fit by it reports its row clusters to the results stage
            (the conditional modes use them); False where they carry nothing (no random
            effects, or relatedness terms).
        forward_derivatives: differentiate its objective forward-over-forward (compiles far
            faster for loops such as the tree pass).
        closed_form_diag: a diagonal S without random effects, whose derivatives
            :mod:`drmpy.engine.batch` writes in closed form.
    """

    name: ClassVar[str] = ""
    automatic: ClassVar[bool] = True
    univariate: ClassVar[bool] = True
    bivariate: ClassVar[bool] = False
    reports_clusters: ClassVar[bool] = True
    forward_derivatives: ClassVar[bool] = False
    closed_form_diag: ClassVar[bool] = False

    # -- when it applies (host side, numpy) ------------------------------------------------

    def refusal(self, design: ModelDesign, clusters: np.ndarray | None, automatic: bool) -> str | None:
        """Why this structure does not fit ``design`` (None when it does), the text after
        ``control: structure='<name>' `` in the error of a forced choice.  ``automatic``:
        the stricter test of the automatic choice (cost as well as exactness).  ``clusters``:
        a cluster id per row such that S is block-diagonal by cluster (None if unavailable)."""
        return None if self.univariate else "needs a bivariate model."

    def pair_refusal(self, design: BivariateDesign) -> str | None:
        """As :meth:`refusal`, for a bivariate design."""
        return None if self.bivariate else "does not take bivariate models."

    # -- its arrays (host side) ------------------------------------------------------------

    def relatedness_factor(self, rd: RandomDesign) -> bool:
        """Whether term ``rd`` needs the Cholesky factor of its relatedness matrix K."""
        return rd.is_relmat

    def build(self, design: ModelDesign, clusters: np.ndarray | None,
              n_rows: int) -> tuple[tuple | None, Hashable | None]:
        """(arrays, static part) of this structure for ``design`` padded to ``n_rows`` rows:
        ``Arrays.extra`` and ``Structure.extra`` (None when it needs none)."""
        return None, None

    def build_pairs(self, design: BivariateDesign, n_studies: int) -> tuple | None:
        """``Arrays.extra`` of a bivariate design padded to ``n_studies`` studies."""
        return None

    # -- its likelihood (pure JAX) ---------------------------------------------------------

    def gram(self, sigma2: jax.Array, re_terms: list, arrs: Arrays, struct: Structure, B: jax.Array):
        """``(log|S|, B'S^-1B)`` for row variances ``sigma2`` (0 on padding rows) and the random
        terms' parameters ``re_terms`` (:func:`drmpy.engine.likelihood.split_phi`)."""
        raise NotImplementedError(f"structure {self.name} does not take univariate models")

    def gram_pairs(self, gamma: jax.Array, eta: jax.Array, arrs: Arrays, struct: Structure, B: jax.Array):
        """``(log|S|, B'S^-1B)`` of a bivariate model at sigma coefficients ``gamma`` and rho12
        coefficients ``eta``."""
        raise NotImplementedError(f"structure {self.name} does not take bivariate models")

    def drop_rows(self, extra: tuple | None, on: jax.Array, struct: Structure) -> tuple | None:
        """Its arrays with every row where ``on`` is False turned into a padding row (no
        covariance with any other row; :func:`drmpy.engine.batch.drop_rows`)."""
        return extra
