"""Shapes of every network family and resolution, and that E reads D's trunk features."""

import pytest
import torch

from dali_dist.config import load_config
from dali_dist.models import build_models, sample_shape


@pytest.mark.parametrize("res, ch", [(28, 1), (32, 3), (64, 3)])
def test_dcgan_shapes(res, ch):
    cfg = load_config("mnist", ["model.width=8", "model.latent_dim=16", f"data.resolution={res}", f"data.channels={ch}"], data="x")
    G, D, E = build_models(cfg)
    z = torch.randn(3, 16)
    x = G(z)
    assert x.shape == (3, *sample_shape(cfg)) and x.abs().max() <= 1
    logit, h = D(x)
    assert logit.shape == (3,) and h.shape[1:] == D.feature_shape
    mu, logvar = E(h)
    assert mu.shape == logvar.shape == (3, 16)


def test_mlp_shapes_and_logvar_clamp():
    cfg = load_config("grid2d", ["model.logvar_min=-2", "model.logvar_max=1"])
    G, D, E = build_models(cfg)
    x = G(torch.randn(5, cfg.model.latent_dim))
    logit, h = D(100 * x)
    mu, logvar = E(h)
    assert x.shape == (5, 2) and logit.shape == (5,) and mu.shape == (5, cfg.model.latent_dim)
    assert logvar.min() >= -2 and logvar.max() <= 1


def test_gan_variant_builds_no_encoder():
    cfg = load_config("grid2d", ["model.variant=gan"])
    assert build_models(cfg)[2] is None
