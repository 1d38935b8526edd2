"""Reconstruction MSE against a hand computation on a tiny checkpoint; the gan variant is refused."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from dali_dist.checkpoint import load_export
from dali_dist.errors import UserError
from dali_dist.evaluate import EvalOptions, evaluate_checkpoint

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
