"""The family seam: what a response distribution tells the formula layer, the fit and the engine.

A family names its distributional parameters (``dpars``, in parameter order), the link of
each, which of them go beyond the Gaussian location-scale pair (``extra_dpars``: each gets a
formula ``nu ~ 1`` and coefficients ``nu:(Intercept)``), and the log-density of one effect
size ``y_i`` given its location ``mu_i``, scale ``sigma_i``, extra parameters and known
sampling variance ``v_i`` (the random effect integrated out).  Families register their extra
parameter names with the formula layer (:func:`drmpy.model.formula.register_dpar_names`), so
``Formula("yi ~ x + meta_V(V = vi)", "nu ~ 1")`` parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DrmError

__all__ = ["Family", "LINKS", "inverse_link"]

# link name -> (inverse link on an array, description)
LINKS: Mapping[str, str] = {
    "identity": "identity",
    "log": "log (response = exp(eta))",
    "logit": "logit (response = 1 / (1 + exp(-eta)))",
}


def inverse_link(link: str, eta: jax.Array) -> jax.Array:
    """Response-scale value of a linear predictor ``eta`` under ``link``."""
    if link == "identity":
        return eta
    if link == "log":
        return jnp.exp(eta)
    if link == "logit":
        return jax.nn.sigmoid(eta)
    raise DrmError(f"Unknown link {link!r}; known: {', '.join(LINKS)}.")


def inverse_link_numpy(link: str, eta: np.ndarray) -> np.ndarray:
    """As :func:`inverse_link`, in numpy (for result tables)."""
    eta = np.asarray(eta, dtype=np.float64)
    if link == "identity":
        return eta
    if link == "log":
        return np.exp(eta)
    if link == "logit":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-eta))
    raise DrmError(f"Unknown link {link!r}; known: {', '.join(LINKS)}.")


@dataclass(frozen=True)
class Family:
    """Base of every univariate family.

    Class attributes (the same for every instance of a family):

    * ``name``: the family's name in messages and summaries;
    * ``base_dpars``: ``("mu", "sigma")``, the location and the random-effect scale;
    * ``extra_dpars``: parameters beyond mu and sigma that may be estimated (``("nu",)``);
    * ``links``: link per parameter name;
    * ``gaussian``: whether the marginal of y is Gaussian (the engine's closed-form path,
      and every later stage that assumes a Gaussian model: I2, BLUPs, Q test, ...).

    ``dpars`` are the estimated parameters in parameter order; a family with a parameter
    fixed by the user (``student(nu = 4)``) leaves it out.
    """

    name: ClassVar[str] = "family"
    base_dpars: ClassVar[tuple[str, ...]] = ("mu", "sigma")
    extra_dpars: ClassVar[tuple[str, ...]] = ()
    links: ClassVar[Mapping[str, str]] = {"mu": "identity", "sigma": "log"}
    gaussian: ClassVar[bool] = False

    @property
    def dpars(self) -> tuple[str, ...]:
        """Estimated distributional parameters, in parameter order."""
        return self.base_dpars + self.estimated_extra_dpars

    @property
    def estimated_extra_dpars(self) -> tuple[str, ...]:
        """The extra parameters this instance estimates (not fixed by the user)."""
        return self.extra_dpars

    @property
    def fixed_values(self) -> Mapping[str, float]:
        """Extra parameters fixed by the user, on the response scale."""
        return {}

    def link(self, dpar: str) -> str:
        """Link of ``dpar`` (random-effect SDs ``sd(g)`` are log)."""
        return self.links.get(dpar, "log")

    def logpdf(self, r: jax.Array, v: jax.Array, sigma: jax.Array, extra: Mapping[str, jax.Array]) -> jax.Array:
        """Log-density of ``y_i = mu_i + u_i + e_i`` at ``r = y_i - mu_i``, given the known
        sampling variance ``v_i`` of ``e_i ~ N(0, v_i)``, the scale ``sigma_i`` of ``u_i`` and
        the extra parameters on their response scales (elementwise, float64)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for summaries: the family and how each extra parameter is treated."""
        return repr(self)
