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


@pytest.mark.timeout(180)
def test_cli_encode_reconstruct_interpolate_on_shards(tmp_path):
    import numpy as np

    from tests._archives import make_mnist
    from tests.conftest import run_cli

    make_mnist(tmp_path / "raw", n_train=20, n_test=9)
    assert run_cli("prep", "mnist", "--source", str(tmp_path / "raw"), "--out", str(tmp_path / "sh"), "--quiet").returncode == 0
    ck = export(tmp_path)
    r = run_cli("encode", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--out", str(tmp_path / "z.npz"), "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "z.npz")
    assert z["codes"].shape == (9, 6) and z["sigmas"].shape == (9, 6) and z["labels"].shape == (9,) and len(z["keys"]) == 9
    r = run_cli("reconstruct", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--num", "5", "--out", str(tmp_path / "rec"))
    assert r.returncode == 0, r.stderr
    rec = np.load(tmp_path / "rec" / "reconstructions.npz")
    assert rec["originals"].shape == rec["reconstructions"].shape == (5, 28, 28, 1)
    assert (tmp_path / "rec" / "grid.png").is_file()
    r = run_cli("interpolate", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--pairs", "2", "--steps", "3", "--out", str(tmp_path / "int"))
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "int" / "interpolations.npz")["paths"].shape == (2, 3, 28, 28, 1)
    r = run_cli("encode", "--checkpoint", str(export(tmp_path, "gan")), "--data", str(tmp_path / "sh"), "--out", str(tmp_path / "g.npz"))
    assert r.returncode == 2 and "has no encoder" in r.stderr


@pytest.mark.timeout(180)
def test_probe_and_knn_metrics_through_the_evaluation_job(tmp_path):
    import json

    import numpy as np

    from dali_dist.metrics.latent import knn_accuracy, linear_probe_accuracy
    from tests._archives import make_mnist
    from tests.conftest import run_cli

    make_mnist(tmp_path / "raw", n_train=30, n_test=12)
    assert run_cli("prep", "mnist", "--source", str(tmp_path / "raw"), "--out", str(tmp_path / "sh"), "--quiet").returncode == 0
    ck = export(tmp_path)
    r = run_cli("evaluate", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--metrics", "probe,knn",
                "--out", str(tmp_path / "m.json"), "--no-track")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    # the same numbers from codes computed independently through the inference API
    for split in ("train", "test"):
        assert run_cli("encode", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--split", split,
                       "--out", str(tmp_path / f"{split}.npz")).returncode == 0
    tr, te = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    assert m["probe_accuracy"] == pytest.approx(linear_probe_accuracy(tr["codes"], tr["labels"], te["codes"], te["labels"]))
    assert m["knn_accuracy"] == pytest.approx(knn_accuracy(tr["codes"], tr["labels"], te["codes"], te["labels"], k=5))
    r = run_cli("evaluate", "--checkpoint", str(export(tmp_path, "gan")), "--data", str(tmp_path / "sh"), "--metrics", "probe", "--no-track")
    assert r.returncode == 2 and "needs an encoder" in r.stderr
