"""Shared pieces of the evaluation tests: tiny shards, tiny checkpoints, and small feature
extractors saved as TorchScript in clean-fid's InceptionV3W calling convention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dali_dist.checkpoint import TrainState, save_checkpoint
from dali_dist.config import load_config
from dali_dist.models import build_models

from tests import _archives as A


def cleanfid_or_skip():
    try:
        import cleanfid.fid  # noqa: F401 - imports torchvision too
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"clean-fid is not importable here ({type(exc).__name__}: {str(exc)[:80]}); "
                    "install the eval extra (clean-fid, torchvision matching torch, scipy)")


def make_shards(root: Path, n_train: int = 230, n_test: int = 103, resolution: int = 28, seed: int = 0) -> tuple[Path, dict]:
    from data_prep.mnist import MnistSource
    from data_prep.shards import build

    data = A.make_mnist(root / "dl", n_train=n_train, n_test=n_test, gz=False, seed=seed)
    out = root / f"shards{resolution}"
    build(MnistSource(root / "dl", resolution=resolution), out, shard_size=60, encoding="png", progress=False)
    return out, data


def image_cfg(shards: Path, *extra):
    return load_config("mnist", ["model.width=8", "model.latent_dim=8", "eval.batch_size=40",
                                 "tracking.enabled=false", "data.num_workers=0", *extra], data=str(shards))


def make_checkpoint(run_dir: Path, cfg, step: int = 5, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    G, D, E = build_models(cfg)
    for net in (G, D, E):  # non-trivial BatchNorm statistics, so eval mode matters
        if net is None:
            continue
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    nets = {"G": G, "D": D, "E": E}
    return save_checkpoint(run_dir, cfg, TrainState(step=step), nets, {}, nets)


class TinyInception(nn.Module):
    """InceptionV3W's convention: ``layers`` takes (x - 128) / 128 of 299x299 RGB in [0, 255];
    ``output`` is the classification head."""

    def __init__(self, dim: int = 16, classes: int = 10):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.Conv2d(8, dim, 3, stride=2),
                                    nn.Tanh(), nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = self.layers((x - 128) / 128).flatten(1)
        return f if return_features else torch.softmax(self.output(f), 1)


def save_tiny_inception(path: Path, dim: int = 16, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(TinyInception(dim).eval()).save(str(path))
    return path
