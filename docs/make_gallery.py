"""Render every drmpy plot on the shipped data sets into docs/gallery/*.png.

Run from the repository root: ``python3 docs/make_gallery.py``.  Models:

* restoration (``drm.datasets.restoration()``): the drmTMB vignette's location-scale model
  ``yi ~ habitat + duration``, ``sigma ~ habitat``; the same with ``sigma ~ duration`` for the
  bubble plot (its prediction band follows sigma(duration)); ``yi ~ 1`` for the funnel plot.
* lim2014 (``drm.datasets.lim2014()``, Fisher z of maternal size vs offspring size): the
  three-level location-scale model ``yi ~ environment + (1|article)``, ``sigma ~ environment``,
  drawn back-transformed to correlations (``transform="tanh"``).
* curtis1998 (``drm.datasets.curtis1998()``, log response ratios of woody plant mass under
  elevated CO2): ``yi ~ 1 + (1|paper)``, drawn as a forest plot with one row per paper
  (``aggregate="paper"``) on the ratio scale (``transform="exp"``).
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import drmpy as drm  # noqa: E402
from drmpy import plots  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent / "gallery"


def save(ax, name: str) -> None:
    path = OUT / f"{name}.png"
    ax.figure.savefig(path, dpi=150)
    plt.close(ax.figure)
    print(f"wrote {path.relative_to(OUT.parent.parent)}")


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

    save(plots.orchard(location_scale, mod="habitat", xlab="Effect size (restoration, SMD)"),
         "orchard_restoration")
    save(plots.orchard(three_level, mod="environment", transform="tanh",
                       xlab="Correlation between maternal and offspring size (r)"), "orchard_lim2014")
    save(plots.bubble(sigma_by_duration, mod="duration", xlab="Duration (standardised)",
                      ylab="Effect size (restoration, SMD)"), "bubble_restoration")
    # 80 studies and two headings, diamonds and notes: two printed pages of at most 60 rows
    for page, name in ((0, "forest_restoration"), (1, "forest_restoration_page2")):
        save(plots.forest(location_scale, label="study", mod="habitat", sort="estimate", data=restoration,
                          page=page, xlab="Effect size (restoration, SMD)"), name)
    # a multilevel model drawn one row per paper (aggregate=), ratios on a log axis
    curtis = drm.effect_size("ROM", data=drm.datasets.curtis1998(), m1i="m1i", sd1i="sd1i", n1i="n1i",
                             m2i="m2i", sd2i="sd2i", n2i="n2i")
    by_paper = drm.fit("yi ~ 1 + (1|paper) + meta_V(V=vi)", data=curtis)
    save(plots.forest(by_paper, aggregate="paper", sort="estimate", transform="exp", data=curtis,
                      ylab="Paper", xlab="Ratio of mean plant mass, elevated / ambient CO2"), "forest_curtis1998")
    save(plots.funnel(random_effects, contour=True, xlab="Effect size (restoration, SMD)"),
         "funnel_restoration")
    save(plots.funnel(three_level, xlab="Residual (Fisher z)"), "funnel_lim2014")
    save(plots.qq(three_level), "qq_lim2014")
    save(plots.profile(three_level, param="sd(article):(Intercept)", transform="exp",
                       xlab="sd(article) (Fisher z scale)"), "profile_lim2014")
    save(plots.caterpillar(three_level, group="article", xlab="article effect: conditional mode and 95% interval (Fisher z)"),
         "caterpillar_lim2014")


if __name__ == "__main__":
    main()
