"""The inference API: shapes, determinism, batch-size invariance, G(mu(x)), bad input."""

import pytest
import torch

from dali_dist.checkpoint import TrainState, save_checkpoint
from dali_dist.config import load_config
from dali_dist.errors import UserError
from dali_dist.inference import DaliModel
from dali_dist.models import build_models


def export(tmp_path, variant="dali"):
    cfg = load_config("mnist", ["model.width=8", "model.latent_dim=6", f"model.variant={variant}"], data="unused")
    torch.manual_seed(0)
    G, D, E = build_models(cfg)
    opt = torch.optim.Adam(D.parameters())
    return save_checkpoint(tmp_path / variant, cfg, TrainState(step=3), {"G": G, "D": D, "E": E},
                           {"d": opt}, {"G": G, "D": D, "E": E})


@pytest.fixture
def images():
    return torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_shapes_and_reconstruction_is_G_of_mu(tmp_path, images):
    m = DaliModel.load(export(tmp_path), batch_size=3)
    mu, sigma = m.encode(images)
    assert mu.shape == sigma.shape == (7, 6) and (sigma > 0).all()
    rec = m.reconstruct(images)
    assert rec.shape == images.shape
    torch.testing.assert_close(rec, m.exp.G(m.exp.E(m.exp.D(images)[1])[0]))
    assert m.posterior_samples(images, k=4).shape == (7, 4, 1, 28, 28)
    assert m.interpolate(images[0], images[1], 5).shape == (5, 1, 28, 28)
    assert m.generate(9).shape == (9, 1, 28, 28)


def test_interpolation_endpoints_are_the_reconstructions(tmp_path, images):
    m = DaliModel.load(export(tmp_path))
    path = m.interpolate(images[0], images[1], 4)
    torch.testing.assert_close(path[[0, -1]], m.reconstruct(images[:2]))


def test_batch_size_invariance_and_determinism(tmp_path, images):
    ck = export(tmp_path)
    a, b = DaliModel.load(ck, batch_size=2), DaliModel.load(ck, batch_size=100)
    torch.testing.assert_close(a.encode(images)[0], b.encode(images)[0])
    torch.testing.assert_close(a.generate(5, seed=3), b.generate(5, seed=3))
    torch.testing.assert_close(a.posterior_samples(images, 2, seed=1), b.posterior_samples(images, 2, seed=1))
    assert not torch.equal(a.generate(5, seed=3), a.generate(5, seed=4))
    # uint8 images are accepted and mean the same as their [-1, 1] floats
    u8 = ((images + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(a.encode(u8)[0], a.encode(u8.float() / 127.5 - 1)[0])


def test_outputs_live_on_the_model_device(tmp_path, images):
    m = DaliModel.load(export(tmp_path), device="cpu")
    assert m.reconstruct(images).device.type == "cpu"
    if torch.cuda.is_available():
        g = DaliModel.load(export(tmp_path / "g"), device="cuda")
        assert g.reconstruct(images).device.type == "cuda"


def test_bad_inputs_say_what_is_expected(tmp_path, images):
    m = DaliModel.load(export(tmp_path))
    with pytest.raises(UserError, match=r"takes \(N, 1, 28, 28\) images"):
        m.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(UserError, match=r"takes \(N, 6\)"):
        m.decode(torch.zeros(2, 5))
    gan = DaliModel.load(export(tmp_path, "gan"))
    with pytest.raises(UserError, match="'gan' variant has no encoder"):
        gan.reconstruct(images)
    assert gan.generate(2).shape == (2, 1, 28, 28)
