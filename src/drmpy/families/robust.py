"""Heavy-tailed random-effect families with known V: Student-t and a two-component normal mixture.

Both keep ``e_i ~ N(0, v_i)`` (the known sampling variance) and replace the normal random
effect ``u_i ~ N(0, sigma_i^2)`` of the Gaussian model:

* :class:`Student`: ``u_i ~ t_nu(0, sigma_i)`` (scale sigma_i; variance
  ``sigma_i^2 nu / (nu - 2)`` for nu > 2).  ``nu`` has a log link; ``nu -> infinity``
  (``1/nu = 0``) is the normal model.  metaplus's ``tau2`` is ``sigma^2`` and its
  ``vinv`` is ``1/nu``.
* :class:`NormalMixture`: ``u_i ~ (1 - p) N(0, sigma_i^2) + p N(0, sigma_out^2)``, an outlier
  component with its own SD ``sigma_out`` (log link) and probability ``p_out`` (logit link).
  metaplus's ``tau2``, ``tau2out`` and ``lpoutlier`` are ``sigma^2``, ``sigma_out^2`` and
  ``logit(p_out)``.  The two components are not ordered by the model (as in metaplus); the
  fit starts with ``sigma_out > sigma`` and ``fit.check()`` says when the fitted components
  swapped roles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp

from ..errors import DrmError
from ..model.formula import register_dpar_names
from .base import Family
from .gaussian import normal_logpdf
from .student_marginal import student_normal_logpdf

__all__ = ["Student", "NormalMixture", "student", "normal_mixture"]


@dataclass(frozen=True)
class Student(Family):
    """Student-t random effects: ``u_i ~ t_nu(0, sigma_i)``; ``nu`` estimated (``nu=None``,
    formula ``nu ~ 1`` by default, log link) or fixed at a positive value."""

    name: ClassVar[str] = "student"
    extra_dpars: ClassVar[tuple[str, ...]] = ("nu",)
    links: ClassVar[Mapping[str, str]] = {"mu": "identity", "sigma": "log", "nu": "log"}
    nu: float | None = None

    def __post_init__(self) -> None:
        if self.nu is not None:
            value = float(self.nu)
            if not (math.isfinite(value) and value > 0):
                raise DrmError(f"student(nu=...) must be a positive finite number (or None to estimate it), "
                               f"got {self.nu!r}; the normal model (nu = infinity) is drm.gaussian().")
            object.__setattr__(self, "nu", value)

    @property
    def estimated_extra_dpars(self) -> tuple[str, ...]:
        return () if self.nu is not None else ("nu",)

    @property
    def fixed_values(self) -> Mapping[str, float]:
        return {} if self.nu is None else {"nu": float(self.nu)}

    def logpdf(self, r: jax.Array, v: jax.Array, sigma: jax.Array, extra: Mapping[str, jax.Array]) -> jax.Array:
        return student_normal_logpdf(r, v, sigma, extra["nu"])

    def __repr__(self) -> str:
        return "student()" if self.nu is None else f"student(nu={self.nu:g})"


@dataclass(frozen=True)
class NormalMixture(Family):
    """Normal-mixture random effects (metaplus's "mixture"): with probability ``1 - p_out``
    ``u_i ~ N(0, sigma_i^2)``, with probability ``p_out`` ``u_i ~ N(0, sigma_out^2)``."""

    name: ClassVar[str] = "normal_mixture"
    extra_dpars: ClassVar[tuple[str, ...]] = ("sigma_out", "p_out")
    links: ClassVar[Mapping[str, str]] = {"mu": "identity", "sigma": "log", "sigma_out": "log",
                                          "p_out": "logit"}

    def logpdf(self, r: jax.Array, v: jax.Array, sigma: jax.Array, extra: Mapping[str, jax.Array]) -> jax.Array:
        return mixture_components(r, v, sigma, extra).sum_log()

    def __repr__(self) -> str:
        return "normal_mixture()"


@dataclass(frozen=True)
class MixtureComponents:
    """Per row, the log of each component's weighted density: ``log(1-p) + log N(r; 0, v + sigma^2)``
    and ``log p + log N(r; 0, v + sigma_out^2)``."""

    main: jax.Array
    outlier: jax.Array

    def sum_log(self) -> jax.Array:
        return jnp.logaddexp(self.main, self.outlier)

    def outlier_probability(self) -> jax.Array:
        """Posterior probability that the row's random effect comes from the outlier component."""
        return jnp.exp(self.outlier - self.sum_log())


def mixture_components(r: jax.Array, v: jax.Array, sigma: jax.Array,
                       extra: Mapping[str, jax.Array]) -> MixtureComponents:
    """The two weighted component log-densities of :class:`NormalMixture` at ``r = y - mu``."""
    p = extra["p_out"]
    s_out = extra["sigma_out"]
    log_p = jnp.log(p)
    log_1mp = jnp.log1p(-p)
    return MixtureComponents(log_1mp + normal_logpdf(r, v + sigma * sigma),
                             log_p + normal_logpdf(r, v + s_out * s_out))


def student(nu: float | None = None) -> Student:
    """Student-t random effects (``nu=None``: estimated with formula ``nu ~ 1``, log link)."""
    return Student(nu)


def normal_mixture() -> NormalMixture:
    """Normal-mixture (outlier) random effects, metaplus's ``random = "mixture"``."""
    return NormalMixture()


register_dpar_names(Student.extra_dpars, Student.name)
register_dpar_names(NormalMixture.extra_dpars, NormalMixture.name)
