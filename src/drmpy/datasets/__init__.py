"""Data shipped with drmpy."""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["restoration"]


def restoration() -> pd.DataFrame:
    """The drmTMB vignette's simulated restoration meta-analysis (R ``set.seed(20)``).

    80 effect sizes ``yi`` with sampling variances ``vi``; ``habitat`` is an unordered
    categorical with levels grassland (reference) then forest; ``duration`` numeric.
    """
    with resources.files(__package__).joinpath("restoration.csv").open("r") as fh:
        frame = pd.read_csv(fh)
    frame["habitat"] = pd.Categorical(frame["habitat"], categories=["grassland", "forest"])
    frame["study"] = frame["study"].astype(str)
    return frame
