"""Reading drawn artists back (what a plot test asserts against its table)."""

import numpy as np


def artist(ax, label):
    """The single artist of ``ax`` with this label (collections, lines and patches)."""
    found = [a for a in [*ax.collections, *ax.lines, *ax.patches] if a.get_label() == label]
    assert len(found) == 1, f"expected one artist labelled {label!r}, found {len(found)}"
    return found[0]


def hline_segments(collection):
    """(y, x_low, x_high) per horizontal segment of a LineCollection."""
    segs = np.array([s for s in collection.get_segments()])
    assert np.allclose(segs[:, 0, 1], segs[:, 1, 1])
    return segs[:, 0, 1], segs[:, 0, 0], segs[:, 1, 0]
