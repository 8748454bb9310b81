"""drmpy: distributional regression for meta-analysis.

One formula per distributional parameter (``mu``, ``sigma``, ``sd(group)``), the known
sampling (co)variance of each effect size through ``meta_V(V = ...)``, exact Gaussian
marginal likelihoods (ML and REML) in JAX.  Reference semantics: the R package drmTMB.

Importing drmpy enables JAX float64 and a persistent compilation cache (see
:mod:`drmpy._jax`; ``DRMPY_NO_JAX_CACHE=1`` switches the cache off).

>>> import drmpy as drm
>>> fit = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"),
...               data=drm.datasets.restoration())
>>> round(fit.loglik, 2)
-24.77
"""

from ._startup import long_lived_imports

with long_lived_imports():  # see drmpy._startup: the objects of these imports live as long as the process
    from . import _jax  # noqa: F401  (float64 + compilation cache before any array is made)
    from . import datasets
    from .api import biv_gaussian, check, clear_cache, fit, gaussian, normal_mixture, student
    from .engine.program import Control
    from .errors import (ConvergenceWarning, CovarianceError, DataError, DrmError,
                         DrmWarning, FormulaError, RandomEffectsError)
    from .model.bivariate import meta_vcov_bivariate
    from .model.formula import Formula
    from .model.long_format import long_to_bivariate
    from .results.bivariate import BivariateFit
    from .results.fit import DrmFit

__version__ = "0.1.0"

# Names of the later stages (many fits at once, inference, heterogeneity, plots, effect
# sizes, bias) are imported on first use (PEP 562), so ``import drmpy`` does not pay for them.
_LAZY = {
    "fit_batch": "drmpy.batch.batch",
    "parametric_bootstrap": "drmpy.simulation.bootstrap",
    "lrt": "drmpy.inference.lrt",
    "compare": "drmpy.inference.lrt",
    "effect_size": "drmpy.effects.effect_size",
    "sampling_covariance": "drmpy.effects.covariance",
    "shared_control_covariance": "drmpy.effects.covariance",
    "phylo_corr": "drmpy.effects.phylogeny",
    "egger_test": "drmpy.bias.egger",
    "pet_peese": "drmpy.bias.egger",
    "trim_and_fill": "drmpy.bias.trimfill",
    "selection_model": "drmpy.bias.selection",
    "outlier_test": "drmpy.inference.outlier_test",
}
# Later-stage subpackages reached as attributes (``drm.plots``), imported on first use.
_LAZY_SUBMODULES = {"plots": "drmpy.plots"}

__all__ = [
    "fit",
    "fit_batch",
    "parametric_bootstrap",
    "lrt",
    "compare",
    "effect_size",
    "sampling_covariance",
    "shared_control_covariance",
    "phylo_corr",
    "egger_test",
    "pet_peese",
    "trim_and_fill",
    "selection_model",
    "outlier_test",
    "Formula",
    "gaussian",
    "biv_gaussian",
    "student",
    "normal_mixture",
    "meta_vcov_bivariate",
    "long_to_bivariate",
    "BivariateFit",
    "check",
    "clear_cache",
    "Control",
    "DrmFit",
    "datasets",
    "plots",
    "DrmError",
    "FormulaError",
    "DataError",
    "CovarianceError",
    "RandomEffectsError",
    "DrmWarning",
    "ConvergenceWarning",
    "__version__",
]


def __getattr__(name: str):
    import importlib

    if name in _LAZY_SUBMODULES:
        return importlib.import_module(_LAZY_SUBMODULES[name])  # the import binds drmpy.plots
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'drmpy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_SUBMODULES))
