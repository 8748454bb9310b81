"""Data shipped with drmpy."""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["restoration", "lim2014", "curtis1998", "bcg", "moura2021", "moura2021_tree", "cdp", "mag"]


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


def curtis1998() -> pd.DataFrame:
    """Elevated CO2 and woody plant mass: raw group summaries of 102 experiments in 29 papers.

    Curtis and Wang (1998), *Ecology* 79: 1353-1358.  Taken from the R package metadat 1.2.0
    (``dat.curtis1998``; licence GPL (>= 2)) by ``make_curtis1998.R`` beside this file, with
    dots in column names written as underscores.  Several experiments per paper, so a
    three-level model (``(1 | paper)``) with correlated sampling errors within a paper
    (:func:`drmpy.sampling_covariance`) suits them.

    Columns: ``id`` (experiment), ``paper`` (string id), ``genus``, ``species``, ``fungrp``
    (functional group: ANGIO, GYMNO, N2FIX), ``co2_ambi``/``co2_elev`` (ppm), ``time`` (days),
    ``method`` (GC, OTC, ...), ``xtrt`` (other treatment), and the raw summaries ``m1i``,
    ``sd1i``, ``n1i`` (elevated CO2) and ``m2i``, ``sd2i``, ``n2i`` (ambient) for
    :func:`drmpy.effect_size` (e.g. ``"ROM"``, the log response ratio).
    """
    with resources.files(__package__).joinpath("curtis1998.csv").open("r") as fh:
        frame = pd.read_csv(fh)
    frame["paper"] = frame["paper"].astype(str)
    return frame


def bcg() -> pd.DataFrame:
    """BCG vaccine against tuberculosis: 2 x 2 tables of 13 trials (metafor's ``dat.bcg``).

    Colditz et al. (1994), *JAMA* 271: 698-702.  Taken from the R package metadat 1.2.0
    (``dat.bcg``; licence GPL (>= 2)) by ``make_bcg.R`` beside this file, columns unchanged.
    The metafor documentation's running example: ``drm.effect_size("RR", bcg(), ai="tpos",
    bi="tneg", ci="cpos", di="cneg")`` gives the log risk ratios ``yi`` and their sampling
    variances ``vi`` (metafor's ``escalc(measure = "RR", ...)``).

    Columns: ``trial`` (1 to 13), ``author``, ``year`` (publication year), ``tpos``/``tneg``
    (vaccinated group: tuberculosis cases and non-cases), ``cpos``/``cneg`` (control group),
    ``ablat`` (absolute latitude of the trial, degrees) and ``alloc`` (treatment allocation;
    categorical with R's levels alternate, random, systematic).
    """
    with resources.files(__package__).joinpath("bcg.csv").open("r") as fh:
        frame = pd.read_csv(fh)
    frame["alloc"] = pd.Categorical(frame["alloc"], categories=["alternate", "random", "systematic"])
    return frame


def moura2021() -> pd.DataFrame:
    """Assortative mating across animals: a phylogenetic multilevel meta-analysis.

    1,828 correlations between the traits of mates from 457 studies of 341 species, Moura
    et al. (2021), *Ecology Letters* 24: 1089-1102.  Taken from the R package metadat 1.2.0
    (``dat.moura2021``; licence GPL (>= 2)) by ``make_moura2021.R`` beside this file, with
    dots in column names written as underscores.  The species' phylogeny is
    :func:`moura2021_tree`; metafor's help page fits these data with
    ``random = list(~ 1 | study.id, ~ 1 | effect.size.id, ~ 1 | species.id, ~ 1 | phylogeny)``
    and ``R = list(phylogeny = vcv(tree, corr = TRUE))``, drmpy with
    ``phylo(1 | phylogeny, tree = tree) + (1 | species_id) + (1 | study_id)`` (sigma is the
    effect-size level).

    Columns: ``study_id``, ``effect_size_id``, ``species`` (as published), ``species_id`` (the
    tree's tip label), ``phylogeny`` (a copy of ``species_id`` for the phylogenetic term),
    ``subphylum``, ``phylum``, ``assortment_trait``, ``trait_dimensions``, ``field_collection``,
    ``publication_year``, ``pooled_data``, ``spatially_pooled``, ``temporally_pooled``, ``ri``
    (correlation), ``ni`` (sample size), ``yi`` = atanh(ri) (Fisher z) and ``vi`` = 1 / (ni - 3).
    """
    with resources.files(__package__).joinpath("moura2021.csv").open("r") as fh:
        frame = pd.read_csv(fh)
    frame["effect_size_id"] = frame["effect_size_id"].astype(str)
    return frame


def moura2021_tree() -> str:
    """The phylogeny of :func:`moura2021`'s 341 species as Newick text: metadat's tree with
    Grafen's branch lengths (ape's ``compute.brlen``; ultrametric, height 1, with polytomies)."""
    return resources.files(__package__).joinpath("moura2021.nwk").read_text()


def _study_se_table(filename: str) -> pd.DataFrame:
    """Read a (study, yi, sei) table written by ``make_cdp_mag.R`` and add ``vi = sei**2``.

    The CSV holds each number's shortest exact decimal form, so pandas reads back the exact
    doubles metaplus stores.
    """
    with resources.files(__package__).joinpath(filename).open("r") as fh:
        frame = pd.read_csv(fh, dtype={"study": str})
    frame["vi"] = frame["sei"] ** 2
    return frame


def cdp() -> pd.DataFrame:
    """CDP-choline for cognitive and behavioural disturbances in the elderly: 10 trials.

    Fioravanti and Yanagi (2005), Cochrane Database of Systematic Reviews,
    doi:10.1002/14651858.CD000269.pub2.  Taken from the R package metaplus 1.0-8 (``cdp``;
    licence GPL (>= 2)) by ``make_cdp_mag.R`` beside this file, values and row order unchanged.
    metaplus's vignette (Beath 2014) fits it with normal, t and normal-mixture random
    effects: one study is far from the others (in these data the row labelled "Bonavita 1983",
    yi = 2.22; the vignette's text calls it Senin 2003).

    Columns: ``study`` (author and year), ``yi`` (standardised mean difference), ``sei`` (its
    standard error, metaplus's second argument) and ``vi`` = ``sei**2``, the sampling variance
    for ``meta_V(V = vi)``.
    """
    return _study_se_table("cdp.csv")


def mag() -> pd.DataFrame:
    """Intravenous magnesium in acute myocardial infarction: 16 trials (log odds ratios).

    Sterne, Bradburn and Egger (2001), "Meta-analysis in Stata", in Egger, Davey Smith and
    Altman (eds.), *Systematic Reviews in Health Care*, BMJ Books, pp. 347-369.  Taken from the
    R package metaplus 1.0-8 (``mag``; licence GPL (>= 2)) by ``make_cdp_mag.R`` beside this
    file, values and row order unchanged.  The question metaplus's vignette asks of it is
    whether the large ISIS-4 trial is an outlier (its answer: no; the t model collapses to the
    normal one).

    Columns: ``study`` (first author or trial name), ``yi`` (log odds ratio of death), ``sei``
    (its standard error) and ``vi`` = ``sei**2``, the sampling variance for ``meta_V(V = vi)``.
    """
    return _study_se_table("mag.csv")
