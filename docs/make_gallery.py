"""Render every drmpy plot on the shipped data sets into docs/gallery/.

Run from the repository root: ``python3 docs/make_gallery.py``.  The figures are drawn inside
``matplotlib.rc_context`` with matplotlib's default style plus the settings in ``GALLERY_RC``,
so a user's matplotlibrc or style does not change them.  Models:

* restoration (``drm.datasets.restoration()``): the drmTMB vignette's location-scale model
  ``yi ~ habitat + duration``, ``sigma ~ habitat``; the same with ``sigma ~ duration`` for the
  bubble plots (the prediction band follows sigma(duration)); ``yi ~ 1`` for the funnel plot
  (with trim-and-fill and Egger's regression).
* lim2014 (``drm.datasets.lim2014()``, Fisher z of maternal size vs offspring size): the
  three-level location-scale model ``yi ~ environment + (1|article)``, ``sigma ~ environment``,
  drawn back-transformed to correlations (``transform="tanh"``) where the effect sizes are shown.
* curtis1998 (``drm.datasets.curtis1998()``, log response ratios of woody plant mass under
  elevated CO2): ``yi ~ 1 + (1|paper)``, drawn as a forest plot with one row per paper
  (``aggregate="paper"``) on the ratio scale (``transform="exp"``).

Besides the PNGs it writes the orchard plot as PDF and SVG (vector formats for a journal: the
format follows the file name) and ``marginal_means_restoration.csv``, the table behind the
restoration orchard plot (marginal means over duration, orchaRd's ``weights = "prop"``).
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.style  # noqa: E402

import drmpy as drm  # noqa: E402
from drmpy import plots  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent / "gallery"

# on top of matplotlib's defaults: a journal's figure fonts, and no timestamp in vector files
GALLERY_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "legend.fontsize": 8.0,
    "savefig.dpi": 150,
    "svg.hashsalt": "drmpy-gallery",
    "svg.fonttype": "none",  # text stays text in the SVG (editable, searchable)
    "pdf.fonttype": 42,  # TrueType in the PDF, as journals ask
}


def save(ax, name: str, formats: tuple[str, ...] = ("png",)) -> None:
    for fmt in formats:
        path = OUT / f"{name}.{fmt}"
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None  # reproducible files
        if fmt == "pdf":
            metadata = {"CreationDate": None, "ModDate": None}
        ax.figure.savefig(path, metadata=metadata)
        print(f"wrote {path.relative_to(OUT.parent.parent)}")
    plt.close(ax.figure)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    restoration = drm.datasets.restoration()
    lim = drm.datasets.lim2014()
    location_scale = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ habitat"),
                             data=restoration)
    sigma_by_duration = drm.fit(drm.Formula("yi ~ habitat + duration + meta_V(V=vi)", "sigma ~ duration"),
                                data=restoration)
    random_effects = drm.fit("yi ~ 1 + meta_V(V=vi)", data=restoration)
    three_level = drm.fit(drm.Formula("yi ~ environment + (1|article) + meta_V(V=vi)", "sigma ~ environment"),
                          data=lim)
    smd = "Standardised mean difference (restoration vs control)"
    r = "Correlation between maternal and offspring size, r"

    with matplotlib.rc_context():
        matplotlib.style.use("default")  # ignore the user's rc settings
        matplotlib.rcParams.update(GALLERY_RC)
        plots.orchard_table(location_scale, "habitat").to_csv(OUT / "marginal_means_restoration.csv",
                                                              index=False, float_format="%.6g")
        save(plots.orchard(location_scale, mod="habitat", xlab=smd), "orchard_restoration",
             formats=("png", "pdf", "svg"))
        save(plots.orchard(three_level, mod="environment", transform="tanh", xlab=r), "orchard_lim2014")
        save(plots.bubble(sigma_by_duration, mod="duration", xlab="Duration (standardised)", ylab=smd),
             "bubble_restoration")
        save(plots.bubble(sigma_by_duration, mod="duration", by="habitat", xlab="Duration (standardised)",
                          ylab=smd), "bubble_restoration_by_habitat")
        # 80 studies and two headings, diamonds and notes: two printed pages of at most 60 rows
        for page, name in ((0, "forest_restoration"), (1, "forest_restoration_page2")):
            save(plots.forest(location_scale, label="study", mod="habitat", sort="estimate", data=restoration,
                              page=page, xlab=smd), name)
        # a multilevel model drawn one row per paper (aggregate=), ratios on a log axis
        curtis = drm.effect_size("ROM", data=drm.datasets.curtis1998(), m1i="m1i", sd1i="sd1i", n1i="n1i",
                                 m2i="m2i", sd2i="sd2i", n2i="n2i")
        by_paper = drm.fit("yi ~ 1 + (1|paper) + meta_V(V=vi)", data=curtis)
        save(plots.forest(by_paper, aggregate="paper", sort="estimate", transform="exp", data=curtis,
                          ylab="Paper", xlab="Ratio of mean plant mass, elevated / ambient CO2"), "forest_curtis1998")
        save(plots.funnel(random_effects, contour=True, trim_and_fill=drm.trim_and_fill(random_effects),
                          egger=drm.egger_test(random_effects), xlab=smd), "funnel_restoration")
        save(plots.funnel(three_level, xlab="Residual of Fisher z (fixed part)"), "funnel_lim2014")
        save(plots.qq(three_level), "qq_lim2014")
        save(plots.profile(three_level, param="sd(article):(Intercept)", transform="exp",
                           xlab="sd(article): SD of article effects (Fisher z)"), "profile_lim2014")
        save(plots.caterpillars(three_level, mod="environment", transform="tanh", xlab=r),
             "caterpillars_lim2014")
        save(plots.ranef_plot(three_level, group="article",
                              xlab="Article effect: conditional mode and 95% interval (Fisher z)"),
             "ranef_lim2014")


if __name__ == "__main__":
    main()
