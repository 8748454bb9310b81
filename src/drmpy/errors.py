"""Exception and warning families of drmpy.

Every problem with a user's input raises a subclass of :class:`DrmError`; every
advisory message is a :class:`DrmWarning`.  Messages name the offending formula,
column, row or level.
"""

from __future__ import annotations

import re

__all__ = [
    "DrmError",
    "FormulaError",
    "DataError",
    "CovarianceError",
    "RandomEffectsError",
    "DrmWarning",
    "ConvergenceWarning",
]


class DrmError(Exception):
    """Root of every error drmpy raises for bad input or an impossible request."""


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class FormulaError(DrmError, ValueError):
    """A formula cannot be parsed or asks for something drmpy does not support.

    The message is plain text: the terminal colour codes formulaic puts around the
    offending part of a formula are removed (they print as ``[1;31m`` in logs and files).
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(_ANSI_ESCAPE.sub("", a) if isinstance(a, str) else a for a in args))


class DataError(DrmError, ValueError):
    """The data do not fit the model: missing or non-numeric columns, bad weights, empty model."""


class CovarianceError(DataError):
    """The known sampling covariance V (or a relatedness matrix K) is malformed."""


class RandomEffectsError(DataError):
    """A random-effect term or its sd() formula does not fit the data."""


class DrmWarning(UserWarning):
    """Root of drmpy's warnings."""


class ConvergenceWarning(DrmWarning):
    """The optimiser stopped before meeting its convergence test; see ``fit.check()``."""
