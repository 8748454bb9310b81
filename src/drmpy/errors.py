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


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour and style codes


class DrmError(Exception):
    """Root of every error drmpy raises for bad input or an impossible request.

    Messages are plain text: terminal colour codes in a wrapped message (formulaic marks the
    offending part of a formula with them; they print as ``[1;31m`` in logs and files) are
    removed.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(_ANSI_ESCAPE.sub("", a) if isinstance(a, str) else a for a in args))


class FormulaError(DrmError, ValueError):
    """A formula cannot be parsed or asks for something drmpy does not support."""


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
