"""Figures of a meta-analysis, each drawn from a table that a public function returns first.

Every plot here has a table function (``orchard_table``, ``forest_table``, ``funnel_table``,
``bubble_table``, ``qq_table``, ``caterpillars_table``, ``ranef_table``, ``profile_table``;
``effect_sizes_table`` gives the points) whose numbers come from the fit's public methods
(``predict`` with intervals, ``ranef``, ``profile``/``conf_int``, the marginal covariance), and a drawing function that takes the fit or that
table first, every other argument by keyword (``ax=None``: a new figure; ``xlab``/``ylab``;
``palette`` for colours; styling keywords for the main artist), and returns the Axes.  A table
carries the settings that made its numbers (level, transform, axes; see
:class:`~drmpy.plots._common.TableSettings`), and the drawing function reads them from it:
a table that lost them, another plot's table, or a conflicting setting raises a ``DrmError``.
matplotlib only; nothing here selects a backend, so Agg works.
"""

from ._common import effect_sizes_table
from .bubble import bubble, bubble_table
from .caterpillars import caterpillars, caterpillars_table
from .forest import forest, forest_table
from .funnel import funnel, funnel_table
from .marginal_means import marginal_means
from .orchard import orchard, orchard_table
from .profile import profile, profile_table
from .qq import qq, qq_table
from .ranef import ranef_plot, ranef_table

__all__ = [
    "orchard", "orchard_table", "forest", "forest_table", "funnel", "funnel_table",
    "bubble", "bubble_table", "qq", "qq_table", "caterpillars", "caterpillars_table",
    "ranef_plot", "ranef_table",
    "profile", "profile_table",
    "effect_sizes_table", "marginal_means",
]
