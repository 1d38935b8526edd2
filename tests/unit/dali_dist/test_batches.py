"""batches.py: real-data batches on the training device. Without shards, the grid mixture's
batches from the one consumed on; with shards, the loader's float batches exactly (the uint8
images are converted on the device); shards that do not fit the config are refused."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from dali_dist.batches import DeviceBatches, check_data_matches
from dali_dist.config import load_config
from dali_dist.data import TrainStream
from dali_dist.errors import UserError
from dali_dist.mixture import GridStream

from tests import _archives as A
from tests.conftest import TINY_GRID

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    return A.mnist_shards(tmp_path_factory.mktemp("mnist"), 40, 8, shard_size=16, encoding="raw")


def test_grid_batches_are_the_mixture_stream_from_the_consumed_count():
    cfg = load_config("grid2d", [*TINY_GRID, "train.seed=11"])
    db = DeviceBatches(cfg, rank=1, world_size=2, batch_size=32, device=CPU)
    assert db.info is None
    ref = GridStream(batch_size=32, seed=11, rank=1, world_size=2)
    assert db.batches_per_epoch == ref.batches_per_epoch == 100_000 // 64
    got = list(itertools.islice(db.start(5), 3))
    want = list(itertools.islice(ref.batches(5), 3))
    for x, (wx, _) in zip(got, want):
        assert x.device == CPU and x.dtype == torch.float32 and torch.equal(x, wx)


def test_shard_batches_equal_the_loaders_float_batches(mnist_shards):
    cfg = load_config("mnist", ["tracking.enabled=false", "data.num_workers=0", "train.seed=4"], data=str(mnist_shards))
    db = DeviceBatches(cfg, rank=0, world_size=1, batch_size=8, device=CPU)
    assert db.info.dataset == "mnist" and db.batches_per_epoch == 40 // 8
    ref = TrainStream(str(mnist_shards), batch_size=8, seed=4, num_workers=0)
    got = list(itertools.islice(db.start(3), 4))  # crosses into the second epoch
    want = list(itertools.islice(ref.batches(3), 4))
    for x, (wx, _) in zip(got, want):
        assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, wx)
        assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("dataset, info, msg", [
    ("grid2d", dict(kind="image", dataset="mnist"), "src: holds image data (mnist), but data.dataset=grid2d needs 2D points"),
    ("mnist", dict(kind="points", dataset="grid2d"), "src: holds 2D points, but data.dataset=mnist needs images"),
    ("mnist", dict(kind="image", resolution=32, channels=1),
     "src: images are 32px with 1 channel(s), but the config says data.resolution=28, data.channels=1"),
    ("mnist", dict(kind="image", resolution=28, channels=3),
     "src: images are 28px with 3 channel(s), but the config says data.resolution=28, data.channels=1"),
])
def test_shards_that_do_not_fit_the_config_are_refused(dataset, info, msg):
    cfg = load_config(dataset, ["tracking.enabled=false"], data="src")
    with pytest.raises(UserError) as exc:
        check_data_matches(cfg, SimpleNamespace(**info))
    assert str(exc.value) == msg


def test_fitting_shards_pass():
    check_data_matches(load_config("mnist", ["tracking.enabled=false"], data="src"),
                       SimpleNamespace(kind="image", resolution=28, channels=1))
    check_data_matches(load_config("grid2d", ["tracking.enabled=false"], data="src"), SimpleNamespace(kind="points"))


def test_the_check_runs_before_any_batch(mnist_shards):
    cfg = load_config("mnist", ["tracking.enabled=false", "data.num_workers=0", "data.resolution=32"],
                      data=str(mnist_shards))
    with pytest.raises(UserError, match=f"^{mnist_shards}: images are 28px"):
        DeviceBatches(cfg, rank=0, world_size=1, batch_size=8, device=CPU)
