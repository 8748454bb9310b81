"""Publication bias and sensitivity: what happens to a fit when small studies, selective
reporting or single studies are looked at.

Takes a fit result (:class:`~drmpy.results.fit.DrmFit`) and refits related models:
:mod:`~drmpy.bias.egger` (Egger-type regression tests and PET-PEESE inside the full model:
the standard error or the variance added to the ``mu`` formula, every other formula kept),
:mod:`~drmpy.bias.trimfill` (Duval and Tweedie's trim-and-fill),
:mod:`~drmpy.bias.selection` (Vevea and Hedges' step-function selection model),
:mod:`~drmpy.bias.deletion` (leave-one-out refits and influence diagnostics, vectorised over
deletion masks by the engine's :func:`~drmpy.engine.batch.deletion_program`).
"""

from .egger import egger_test, pet_peese
from .selection import SelectionModel, selection_model
from .trimfill import TrimAndFill, trim_and_fill

__all__ = ["egger_test", "pet_peese", "trim_and_fill", "TrimAndFill", "selection_model", "SelectionModel"]
