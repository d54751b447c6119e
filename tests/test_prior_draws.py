"""Draws from the trained prior (kappadiff.stages.prior): the TARP references."""

from __future__ import annotations

import numpy as np
import pytest
from validation_products import N_BINS, tiny_prior, validation_config

from kappadiff import products
from kappadiff.stages import prior as prior_stage


def test_draw_tarp_references_from_a_tiny_prior(tmp_path):
    model = tiny_prior(tmp_path / "model.pt")
    config = validation_config()
    a = prior_stage.draw_tarp_references(model, tmp_path / "a.fits", config)
    b = prior_stage.draw_tarp_references(model, tmp_path / "b.fits", config)
    ka = products.read_images(a, ["KAPPA"])[0]["KAPPA"]
    assert ka.shape == (2, N_BINS, 16, 16) and np.all(np.isfinite(ka))
    np.testing.assert_array_equal(ka, products.read_images(b, ["KAPPA"])[0]["KAPPA"])
    with pytest.raises(ValueError, match="layout.npix = 32"):
        prior_stage.draw_tarp_references(model, tmp_path / "c.fits", validation_config(npix=32))
