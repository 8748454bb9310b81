"""Heterogeneity summaries of a fit: the Q test, I2, H2 and R2.

Takes a univariate :class:`~drmpy.DrmFit` and gives metafor's ``QE`` test for residual
heterogeneity, Higgins and Thompson's I2 and H2 generalised to several variance components
(Nakagawa and Santos 2012; orchaRd's ``i2_ml``), per level of a column for location-scale
models, and the R2 of the location moderators (Nakagawa and Schielzeth; orchaRd's ``r2_ml``;
metafor's pseudo-R2).  The fit's methods ``q_test``, ``i2``, ``h2`` and ``r2`` call these.
"""

from .statistics import (h2, i2, q_test, r2, sampling_gls, typical_sampling_variance,
                         variance_components)

__all__ = ["q_test", "i2", "h2", "r2", "typical_sampling_variance", "variance_components", "sampling_gls"]
