"""metrics/codes.py: the inferred codes mu(x) of a split equal the encoder applied by hand to
the images the shards were made from, in sample order, with their labels; per-rank shares
put together in rank order give the one-process result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_dist.checkpoint import load_export
from dali_dist.metrics.codes import split_codes
from dali_dist.metrics.ranks import Ranks

from tests._eval_kit import image_cfg, make_checkpoint, make_shards

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    shards, data = make_shards(root, n_train=20, n_test=23)
    exp = load_export(make_checkpoint(root / "run", image_cfg(shards)))
    return shards, data, exp


class _Share(Ranks):
    """Rank ``rank`` of ``world`` without a process group: gather_rows returns this rank's rows."""

    def __init__(self, rank, world):
        self.rank, self.world, self.device = rank, world, torch.device("cpu")

    def gather_rows(self, local):
        return local


def test_codes_are_the_encoder_means_in_sample_order(kit, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    shards, data, exp = kit
    codes, labels = split_codes(exp, shards, "test", batch_size=7, ranks=Ranks("cpu"), progress=False)
    x_u8, y = data["test"]
    x = torch.from_numpy(x_u8).float()[:, None] / 127.5 - 1
    with torch.no_grad():
        mu, _ = exp.E(exp.D(x)[1])
    assert codes.shape == (23, exp.cfg.model.latent_dim) and codes.dtype == np.float32
    np.testing.assert_allclose(codes, mu.numpy(), rtol=1e-5, atol=1e-6)
    assert labels.dtype == np.int64 and labels.tolist() == y.tolist()


def test_rank_shares_put_together_give_the_whole_split(kit):
    shards, _, exp = kit
    whole, whole_y = split_codes(exp, shards, "test", batch_size=5, ranks=_Share(0, 1), progress=False)
    parts = [split_codes(exp, shards, "test", batch_size=5, ranks=_Share(r, 3), progress=False) for r in range(3)]
    assert [len(c) for c, _ in parts] == [7, 8, 8]
    np.testing.assert_allclose(np.concatenate([c for c, _ in parts]), whole, rtol=1e-5, atol=1e-6)
    assert np.concatenate([y for _, y in parts]).tolist() == whole_y.tolist()
