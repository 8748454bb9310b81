"""Families: the distribution of an effect size given its parameters (issue 24 item 2).

:class:`~drmpy.families.base.Family` is the seam; :class:`Gaussian` (the engine's closed-form
path), :class:`Student` and :class:`NormalMixture` (robust random effects, fitted by
:mod:`drmpy.robust`) are its members.  Importing this package registers the families' extra
parameter names (``nu``, ``sigma_out``, ``p_out``) with the formula layer.
"""

from .base import Family, inverse_link, inverse_link_numpy
from .gaussian import BivariateGaussian, Gaussian, biv_gaussian, gaussian
from .robust import NormalMixture, Student, normal_mixture, student

__all__ = ["Family", "Gaussian", "BivariateGaussian", "Student", "NormalMixture", "gaussian",
           "biv_gaussian", "student", "normal_mixture", "inverse_link", "inverse_link_numpy"]
