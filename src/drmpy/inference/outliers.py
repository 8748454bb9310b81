"""Outlier output of the robust families: per-study outlier probabilities (normal mixture) and
the likelihood-ratio test of the t model against the normal model (issue 26)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DrmError
from ..families.robust import mixture_components

__all__ = ["outlier_probabilities", "lrt_normal"]


def outlier_probabilities(fit) -> pd.Series:
    """Posterior probability that row i's random effect comes from the outlier component of a
    ``normal_mixture()`` fit, at the estimates: ``p N(r_i; 0, v_i + sigma_out^2) / f(r_i)``,
    ``r_i = y_i - mu_i`` (metaplus's ``outlierProbs``).  With a ``(1|g)`` effect ``b_g`` the
    probability is given all rows of the group, ``E[P(outlier | r_i - b_g) | y_g]``, the
    expectation over the posterior of ``b_g`` by the likelihood's own quadrature
    (:func:`drmpy.robust.likelihood.group_posterior_nodes`)."""
    family = getattr(fit, "family", None)
    if family is None or family.name != "normal_mixture":
        raise DrmError(f"outlier_probabilities() is for family normal_mixture(); this fit's family is "
                       f"{family!r}.")
    if fit.design.random:
        return _group_outlier_probabilities(fit)
    values = {d: jnp.asarray(fit.dpar_values(d).to_numpy()) for d in ("mu", "sigma", "sigma_out", "p_out")}
    r = jnp.asarray(fit.design.y) - values["mu"]
    comps = mixture_components(r, jnp.asarray(fit.design.known_v.diag), values["sigma"], values)
    return pd.Series(np.asarray(comps.outlier_probability()), index=fit.design.row_labels, name="outlier_probability")


def _group_outlier_probabilities(fit) -> pd.Series:
    from ..robust.likelihood import group_posterior_nodes
    from ..robust.program import prepare_robust

    arrays, layout = prepare_robust(fit.design, fit.family)
    b, weights, r, sigma, extra = group_posterior_nodes(jnp.asarray(fit.theta, dtype=jnp.float64), arrays,
                                                        layout, fit.family)
    group = arrays.group
    comps = mixture_components(r[None, :] - b[:, group], arrays.v[None, :], sigma[None, :],
                               {k: e[None, :] for k, e in extra.items()})  # (K, n)
    probability = jnp.sum(weights[:, group] * comps.outlier_probability(), axis=0)
    return pd.Series(np.asarray(probability), index=fit.design.row_labels, name="outlier_probability")


def lrt_normal(fit) -> pd.Series:
    """LRT of ``student()`` (nu estimated) against the normal model with the same formulas:
    ``statistic = 2 (logLik_t - logLik_normal)`` (0 at the boundary), ``df = 1``, and a p-value
    from the boundary mixture ``0.5 chi2_0 + 0.5 chi2_1`` (the normal model is ``1/nu = 0``, on
    the edge of the parameter space; Self and Liang 1987)."""
    family = getattr(fit, "family", None)
    if family is None or family.name != "student" or "nu" not in family.estimated_extra_dpars:
        raise DrmError(f"lrt_normal() is for family student() with nu estimated; this fit's family is {family!r}.")
    if fit.design.fixed["nu"].matrix.shape[1] != 1:
        raise DrmError("lrt_normal(): the boundary test is for `nu ~ 1` (one nu); this model has a nu formula.")
    stat = max(0.0, 2.0 * (fit.loglik - fit.normal_loglik))
    p = 0.5 * stats.chi2.sf(stat, 1) if stat > 0 else 1.0
    return pd.Series({"statistic": stat, "df": 1, "p_value": p, "loglik": fit.loglik,
                      "loglik_normal": fit.normal_loglik}, name="lrt_normal")
