"""Reconstruction MSE and the cycle on generated samples against hand computations on tiny
checkpoints; the gan variant is refused."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from dali_dist.checkpoint import TrainState, load_export, save_checkpoint
from dali_dist.errors import UserError
from dali_dist.evaluate import EvalOptions, evaluate_checkpoint
from dali_dist.models import build_models
from dali_dist.seeding import generator

from tests._eval_kit import image_cfg, make_checkpoint, make_shards
from tests.conftest import run_cli


pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("mse")
    shards, data = make_shards(root, n_train=40, n_test=37)
    return root, shards, data


def test_mse_matches_a_hand_computation(kit):
    root, shards, data = kit
    ckpt = make_checkpoint(root / "run", image_cfg(shards))
    m = evaluate_checkpoint(ckpt, ["mse"], opts=EvalOptions(progress=False, batch_size=16))
    exp = load_export(ckpt)
    x_u8 = data["test"][0]  # the raw test images the shards were made from, in order
    x = torch.from_numpy(x_u8).float()[:, None] / 127.5 - 1
    with torch.no_grad():
        h = exp.D.features(x)
        mu, _ = exp.E(h)
        rec = exp.G(mu).double().numpy()
    per_image = [np.mean((x_u8[i] / 255.0 - (rec[i, 0] + 1) / 2) ** 2) for i in range(len(x_u8))]
    assert m["mse"] == pytest.approx(np.mean(per_image), rel=1e-6)
    assert m["mse_std"] == pytest.approx(np.std(per_image), rel=1e-5)
    assert m["mse_num_images"] == 37 and m["step"] == 5


def test_mse_refuses_the_gan_variant_with_one_line(kit):
    root, shards, _ = kit
    ckpt = make_checkpoint(root / "gan", image_cfg(shards, "model.variant=gan"))
    with pytest.raises(UserError, match="metric 'mse' needs an encoder; variant 'gan' has none"):
        evaluate_checkpoint(ckpt, ["mse"])
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--metrics", "mse")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and "needs an encoder" in errors[0] and "Traceback" not in r.stderr
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--metrics", "modes")
    assert r.returncode == 2 and "applies to the 2D grid" in r.stderr
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--metrics", "fid,bogus")
    assert r.returncode == 2 and "unknown metric(s) bogus" in r.stderr


def _lively_checkpoint(run_dir, cfg):
    """A checkpoint whose G spreads its samples over the pixel range (DCGAN's N(0, 0.02) start
    draws nearly the same grey image for every z, which would make the cycle trivially small)."""
    torch.manual_seed(1)
    G, D, E = build_models(cfg)
    for net in (G, D, E):
        for mod in net.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(mod.weight, 0.0, 1.0 / mod.weight[0].numel() ** 0.5)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    nets = {"G": G, "D": D, "E": E}
    return save_checkpoint(run_dir, cfg, TrainState(step=3), nets, {}, nets)


@pytest.mark.parametrize("variant", ["dali", "ali"])
def test_cycle_matches_a_hand_computation_sample_by_sample(kit, variant):
    root, shards, _ = kit
    ckpt = _lively_checkpoint(root / f"cycle-{variant}", image_cfg(shards, f"model.variant={variant}"))
    n = 23  # not a multiple of the batch size
    m = evaluate_checkpoint(ckpt, ["cycle"], num_samples=n, opts=EvalOptions(progress=False, batch_size=10))
    exp = load_export(ckpt)
    seed, d = exp.cfg.eval.seed, exp.cfg.model.latent_dim
    img, lat = [], []
    with torch.no_grad():
        for i in range(n):  # one sample at a time: z_i depends on (seed, i) only
            z = torch.randn(d, generator=generator("sample", seed, i))[None]
            u8 = np.round((exp.G(z).clamp(-1, 1).double().numpy() + 1) * 127.5)  # saved as an 8-bit image
            x = torch.from_numpy(u8 / 127.5 - 1).float()
            mu = (exp.E(x) if variant == "ali" else exp.E(exp.D.features(x)))[0]
            rec = exp.G(mu).double().numpy()
            img.append(np.mean((u8 / 255.0 - (rec + 1) / 2) ** 2))
            lat.append(np.mean((z.double().numpy() - mu.double().numpy()) ** 2))
    assert m["cycle_num_samples"] == n
    assert 0.01 < np.mean(img) and 0.05 < np.mean(lat)  # a random G and E: far from inverting each other
    assert m["cycle_mse"] == pytest.approx(np.mean(img), rel=1e-5)
    assert m["cycle_mse_std"] == pytest.approx(np.std(img), rel=1e-4)
    assert m["latent_mse"] == pytest.approx(np.mean(lat), rel=1e-5)


def test_cycle_refuses_the_gan_variant_with_one_line(kit):
    root, shards, _ = kit
    ckpt = make_checkpoint(root / "gan-cycle", image_cfg(shards, "model.variant=gan"))
    r = run_cli("evaluate", "--checkpoint", str(ckpt), "--metrics", "cycle")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and "metric 'cycle' needs an encoder" in errors[0]
    assert "Traceback" not in r.stderr
