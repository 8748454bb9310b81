"""The Gaussian families: the marginal of y is normal, fitted by the engine's closed-form path."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp

from .base import Family

__all__ = ["Gaussian", "BivariateGaussian", "gaussian", "biv_gaussian", "normal_logpdf"]

LOG_2PI = math.log(2.0 * math.pi)


def normal_logpdf(r: jax.Array, variance: jax.Array) -> jax.Array:
    """log N(r; 0, variance), elementwise."""
    return -0.5 * (LOG_2PI + jnp.log(variance) + r * r / variance)


@dataclass(frozen=True)
class Gaussian(Family):
    """Gaussian family: identity link for mu, log link for sigma and every sd(g).

    ``y_i ~ N(mu_i, v_i + sigma_i^2)`` (plus the random effects): the engine profiles the
    location coefficients analytically (exact ML and REML)."""

    name: ClassVar[str] = "gaussian"
    gaussian: ClassVar[bool] = True

    def logpdf(self, r: jax.Array, v: jax.Array, sigma: jax.Array, extra: Mapping[str, jax.Array]) -> jax.Array:
        return normal_logpdf(r, v + sigma * sigma)

    def __repr__(self) -> str:
        return "gaussian()"


def gaussian() -> Gaussian:
    return Gaussian()


@dataclass(frozen=True)
class BivariateGaussian:
    """Bivariate Gaussian family: identity links for mu1, mu2; log for sigma1, sigma2;
    guarded atanh (``rho12 = 0.999999 tanh(eta)``) for rho12.  Same as
    ``[drm.gaussian(), drm.gaussian()]``."""

    name: str = "biv_gaussian"
    dpars: ClassVar[tuple[str, ...]] = ("mu1", "mu2", "sigma1", "sigma2", "rho12")
    gaussian: ClassVar[bool] = True

    def __repr__(self) -> str:
        return "biv_gaussian()"


def biv_gaussian() -> BivariateGaussian:
    return BivariateGaussian()
