"""Data shipped with drmpy."""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["restoration", "lim2014"]


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


def lim2014() -> pd.DataFrame:
    """Maternal size and offspring size across animal species: a multilevel meta-analysis.

    357 correlations from 220 articles (several effect sizes per article; 231 species),
    Lim, Senior and Nakagawa (2014), *Evolution* 68: 2306-2318, "Heterogeneity in individual
    quality and reproductive trade-offs within species" (the maternal size - offspring size
    set).  Taken from the R package metadat 1.2.0 (``dat.lim2014$m_o_size``; licence
    GPL (>= 2)) by ``make_lim2014.R`` beside this file.  orchaRd uses these data in its
    vignette.

    Columns: ``es_id`` (one per row), ``article`` (string id; the clustering level),
    ``species``, ``amniotes`` (no/yes), ``environment`` (categorical: captive, wild),
    ``reprounit`` (life, single), ``year`` (publication year; NaN for 3 rows where it is
    missing or "unpub"), ``ri`` (correlation), ``ni`` (sample size), ``yi`` = atanh(ri) (Fisher
    z) and ``vi`` = 1 / (ni - 3), its sampling variance.  ``np.tanh`` turns z back into r
    (``transform="tanh"`` in :mod:`drmpy.plots`).
    """
    with resources.files(__package__).joinpath("lim2014.csv").open("r") as fh:
        frame = pd.read_csv(fh)
    frame["article"] = frame["article"].astype(str)
    frame["es_id"] = frame["es_id"].astype(str)
    for column in ("amniotes", "environment", "reprounit"):
        frame[column] = pd.Categorical(frame[column], categories=sorted(frame[column].unique()))
    return frame
