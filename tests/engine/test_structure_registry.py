"""Adding a covariance structure is one class plus its registration (drmpy.engine.structures).

The toy structure here stands in for a new module under src/drmpy/engine/structures/: a
``CovarianceStructure`` subclass (a copy of ``dense`` under another name) and one ``register``
call.  Nothing else in drmpy is edited, yet ``control={"structure": ...}`` accepts it, the fit
runs through it and gives the dense structure's numbers, and the registry order decides the
automatic choice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import drmpy as drm
from drmpy.engine import structures
from drmpy.engine.program import Control, choose_structure
from drmpy.engine.structures.dense import Dense
from drmpy.model.design import build_design

TOY = "dense_copy"


class DenseCopy(Dense):
    """The whole of a new structure's module: a name and (here inherited) the methods."""

    name = TOY
    automatic = False


@pytest.fixture
def toy():
    structures.register(DenseCopy())
    try:
        yield TOY
    finally:
        structures.unregister(TOY)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n = 20
    d = pd.DataFrame({"x": rng.normal(size=n), "vi": rng.uniform(0.02, 0.08, n), "study": np.arange(n) // 2})
    d["yi"] = 0.2 + 0.3 * d["x"] + rng.normal(0, 0.3, n) + rng.normal(0, 0.2, n // 2)[d["study"]]
    return d


FORMULA = "yi ~ x + (1|study) + meta_V(V=vi)"


def test_unregistered_name_is_refused():
    with pytest.raises(drm.DrmError, match="structure must be one of"):
        Control.coerce({"structure": TOY})


def test_registered_structure_fits_like_the_structure_it_copies(toy, data):
    fits = {s: drm.fit(drm.Formula(FORMULA), data=data, control={"structure": s}) for s in (toy, "dense")}
    assert fits[toy].structure == toy and fits["dense"].structure == "dense"
    assert fits[toy].converged
    # the same operations in the same order: equal to the last bit
    np.testing.assert_array_equal(fits[toy].params.to_numpy(), fits["dense"].params.to_numpy())
    np.testing.assert_array_equal(fits[toy].vcov().to_numpy(), fits["dense"].vcov().to_numpy())
    assert fits[toy].loglik == fits["dense"].loglik


def test_registry_order_is_the_automatic_choice(data):
    design = build_design(drm.Formula(FORMULA), data)
    assert choose_structure(design, None)[0] == "block"

    class Early(DenseCopy):
        name = "early"
        automatic = True

    structures.register(Early(), before="block")
    try:
        assert [s.name for s in structures.registered()].index("early") == \
            [s.name for s in structures.registered()].index("block") - 1
        assert choose_structure(design, None)[0] == "early"
    finally:
        structures.unregister("early")
    assert choose_structure(design, None)[0] == "block"


def test_registry_names_are_the_valid_controls():
    names = structures.structure_names()
    assert {"diag", "block", "woodbury", "intercepts", "dense", "tree", "pair"} <= set(names)
    for name in names:
        assert Control.coerce({"structure": name}).structure == name
    with pytest.raises(ValueError, match="new name"):
        structures.register(Dense())  # a name is registered once


def test_every_registered_name_is_a_control_and_refusals_name_the_structure(data):
    """The closed-form ``intercepts`` structure (now a control choice as well) fits the block
    structure's model; a univariate model refuses the bivariate ``pair``."""
    f = drm.Formula(FORMULA)
    block = drm.fit(f, data=data)
    closed = drm.fit(f, data=data, control={"structure": "intercepts"})
    assert block.structure == "block" and closed.structure == "intercepts" and closed.converged
    np.testing.assert_allclose(closed.params.to_numpy(), block.params.to_numpy(), rtol=1e-6, atol=1e-8)
    assert closed.loglik == pytest.approx(block.loglik, abs=1e-9)
    with pytest.raises(drm.DrmError, match="structure='pair' needs a bivariate model"):
        drm.fit(f, data=data, control={"structure": "pair"})
    with pytest.raises(drm.DrmError, match="structure='intercepts' needs a random intercept"):
        drm.fit(drm.Formula("yi ~ x + (1 + x|study) + meta_V(V=vi)"), data=data, control={"structure": "intercepts"})
