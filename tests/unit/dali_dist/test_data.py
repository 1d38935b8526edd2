"""The streaming loader: splitting across ranks and workers, equal batch counts, exact resume,
URL patterns, and errors."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
import torch

from dali_dist.data import TrainStream, describe, eval_batches, read_manifest, to_float
from dali_dist.errors import UserError
from data_prep.grid2d import Grid2DSource
from data_prep.mnist import MnistSource
from data_prep.shards import build

from tests import _archives as A


pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:This DataLoader will create")]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """230 train / 103 test samples in shards of 20 (12 + 6 shards, the last ones short)."""
    root = tmp_path_factory.mktemp("data")
    data = A.make_mnist(root / "dl", n_train=230, n_test=103, gz=False)
    build(MnistSource(root / "dl"), root / "raw", shard_size=20, encoding="raw", progress=False)
    build(MnistSource(root / "dl"), root / "png", shard_size=20, encoding="png", progress=False)
    return root, data


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    build(Grid2DSource(num_train=2000, num_test=700, block=150), root / "g", shard_size=450, progress=False)
    return root / "g"


def _take(stream, n, start=0):
    return list(itertools.islice(stream.batches(start), n))


# ------------------------------------------------------------------------------------------ describe


def test_describe_manifest(mnist_dir):
    root, _ = mnist_dir
    info = describe(root / "raw")
    assert (info.dataset, info.resolution, info.channels, info.encoding, info.kind) == ("mnist", 28, 1, "raw", "image")
    assert info.splits == {"train": 230, "test": 103}
    assert len(info.shards["train"]) == 12 and info.shard_counts["train"][-1] == 10
    assert info.manifest_sha256 == hashlib.sha256((root / "raw" / "manifest.json").read_bytes()).hexdigest()
    assert info.shape == (1, 28, 28)
    assert read_manifest(root / "raw")["dataset"] == "mnist"


def test_describe_patterns(mnist_dir):
    root, _ = mnist_dir
    pat = str(root / "raw" / "{split}" / "shard-{000000..000005}.tar")
    info = describe(pat, split="test")  # borrows the manifest's counts
    assert info.splits == {"test": 103} and len(info.shards["test"]) == 6
    assert info.manifest_sha256 == hashlib.sha256((root / "raw" / "manifest.json").read_bytes()).hexdigest()
    piped = "pipe:cat " + str(root / "png" / "test" / "shard-{000000..000005}.tar")
    info = describe(piped, split="test")  # no manifest: probes and counts
    assert info.splits == {"test": 103} and info.manifest_sha256 is None
    assert (info.resolution, info.channels, info.encoding) == (28, 1, "png")


# ------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_eval_two_ranks_two_workers_disjoint_and_covering(mnist_dir, encoding):
    root, data = mnist_dir
    x_all, y_all = data["test"]
    seen = []
    for rank in range(2):
        for x, y, keys in eval_batches(root / encoding, split="test", batch_size=16, rank=rank, world_size=2,
                                       num_workers=2, as_uint8=True):
            idx = [int(k) for k in keys]
            np.testing.assert_array_equal(x.numpy()[:, 0], x_all[idx])
            np.testing.assert_array_equal(y.numpy(), y_all[idx])
            seen += idx
    assert sorted(seen) == list(range(103))  # disjoint and covering: each sample exactly once


def test_eval_is_deterministic_and_float(mnist_dir):
    root, data = mnist_dir
    a = list(eval_batches(root / "raw", split="test", batch_size=50, num_workers=2))
    b = list(eval_batches(root / "raw", split="test", batch_size=50, num_workers=2))
    assert [k for _, _, k in a] == [k for _, _, k in b]
    x = torch.cat([x for x, _, _ in a])
    assert x.dtype == torch.float32 and x.shape == (103, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    idx = [int(k) for _, _, ks in a for k in ks]
    expected = torch.from_numpy(data["test"][0][idx]).unsqueeze(1)
    assert torch.equal(x, to_float(expected))


def test_eval_more_slots_than_shards(mnist_dir):
    root, _ = mnist_dir
    keys = []
    for rank in range(4):
        for _, _, k in eval_batches(root / "raw", split="test", batch_size=7, rank=rank, world_size=4, num_workers=3):
            keys += k
    assert sorted(keys) == [f"{i:05d}" for i in range(103)]


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 0), (5, 1)])
def test_train_equal_batches_disjoint_epoch(mnist_dir, world, workers):
    root, _ = mnist_dir
    b = 9
    streams = [TrainStream(root / "raw", batch_size=b, seed=1, rank=r, world_size=world, num_workers=workers,
                           with_keys=True) for r in range(world)]
    bpe = 230 // (b * world)
    assert {s.batches_per_epoch for s in streams} == {bpe}
    epoch_keys = []
    for s in streams:
        batches = _take(s, bpe + 1)  # one more than an epoch: the stream never runs dry
        assert all(len(k) == b and x.shape == (b, 1, 28, 28) for x, _, k in batches)
        epoch_keys += [k for _, _, ks in batches[:bpe] for k in ks]
    assert len(epoch_keys) == len(set(epoch_keys)) == bpe * b * world  # no sample twice in an epoch


def test_train_epochs_differ_and_seed_matters(mnist_dir):
    root, _ = mnist_dir
    s = TrainStream(root / "raw", batch_size=10, seed=0, num_workers=0, with_keys=True)
    bpe = s.batches_per_epoch
    got = _take(s, 2 * bpe)
    e0 = [k for _, _, ks in got[:bpe] for k in ks]
    e1 = [k for _, _, ks in got[bpe:] for k in ks]
    assert e0 != e1 and len(set(e0)) == len(e0)
    other = [k for _, _, ks in _take(TrainStream(root / "raw", batch_size=10, seed=1, with_keys=True), bpe) for k in ks]
    assert other != e0


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_is_exact(mnist_dir, workers):
    root, _ = mnist_dir
    s = TrainStream(root / "png", batch_size=8, seed=5, rank=1, world_size=2, num_workers=workers, with_keys=True)
    bpe = s.batches_per_epoch  # 14: not a multiple of 3 workers
    full = _take(s, 2 * bpe + 5)
    for k in (1, 4, bpe - 1, bpe, bpe + 2, 2 * bpe + 1):
        resumed = _take(s, 3, start=k)
        for (xa, ya, ka), (xb, yb, kb) in zip(full[k:k + 3], resumed):
            assert ka == kb
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_workers_zero_equals_one(mnist_dir):
    root, _ = mnist_dir
    a = _take(TrainStream(root / "raw", batch_size=16, seed=2, num_workers=0, with_keys=True), 20)
    b = _take(TrainStream(root / "raw", batch_size=16, seed=2, num_workers=1, with_keys=True), 20)
    assert [k for *_, k in a] == [k for *_, k in b]


def test_batches_per_epoch_override_cycles(mnist_dir):
    root, _ = mnist_dir
    per_rank = []
    for r in range(2):
        s = TrainStream(root / "raw", batch_size=50, seed=0, rank=r, world_size=2, num_workers=2,
                        batches_per_epoch=7, with_keys=True)
        got = _take(s, 7)
        assert len(got) == 7 and all(len(k) == 50 for *_, k in got)
        per_rank.append({k for *_, ks in got for k in ks})
    # 350 draws from each rank's own 115 samples: every one of them, and none of the other rank's
    assert len(per_rank[0]) == len(per_rank[1]) == 115 and not per_rank[0] & per_rank[1]


def test_grid2d_points(grid_dir):
    s = TrainStream(grid_dir, batch_size=64, seed=0, num_workers=2)
    x, y = next(s.batches())
    assert x.shape == (64, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert s.batches_per_epoch == 2000 // 64
    keys = [k for r in range(2) for *_, ks in eval_batches(grid_dir, split="test", batch_size=100, rank=r,
                                                            world_size=2, num_workers=2) for k in ks]
    assert sorted(keys) == [f"{i:08d}" for i in range(700)]


def test_pipe_pattern_training(mnist_dir):
    root, _ = mnist_dir
    pat = "pipe:cat " + str(root / "raw" / "train" / "shard-{000000..000011}.tar")
    s = TrainStream(pat, batch_size=23, seed=0, num_workers=2)
    assert s.batches_per_epoch == 10
    x, y = next(s.batches())
    assert x.shape == (23, 1, 28, 28)


# ------------------------------------------------------------------------------------------ errors


def test_errors_are_one_line_user_errors(mnist_dir, tmp_path):
    root, _ = mnist_dir
    with pytest.raises(UserError, match="manifest.json"):
        describe(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)
    m = json.loads((root / "raw" / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["name"] = "../../etc/passwd"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="shard name"):
        read_manifest(tmp_path)
    with pytest.raises(UserError, match="no split 'valid'"):
        TrainStream(root / "raw", split="valid", batch_size=4, seed=0)
    with pytest.raises(UserError, match="fewer than one batch"):
        TrainStream(root / "raw", batch_size=200, seed=0, world_size=2)
    with pytest.raises(UserError, match="no such shard"):
        describe(str(tmp_path / "shard-{000000..000001}.tar"))


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_in_training(mnist_dir, tmp_path, workers):
    root, _ = mnist_dir
    import shutil

    shutil.copytree(root / "raw", tmp_path / "raw")
    for p in (tmp_path / "raw" / "train").iterdir():
        p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(UserError) as e:  # found by the size check, before any batch is read
        _take(TrainStream(tmp_path / "raw", batch_size=10, seed=0, num_workers=workers), 30)
    assert "truncated" in str(e.value) and "shard-" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def empty_train(tmp_path):
    """What prep writes when every train input is corrupt: a train split with no samples."""
    from PIL import Image

    from data_prep.folder import FolderSource

    src = tmp_path / "photos"
    (src / "train").mkdir(parents=True)
    (src / "test").mkdir()
    (src / "train" / "bad.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "test" / "ok.png")
    build(FolderSource(src, resolution=8, progress=False), tmp_path / "out", shard_size=10, max_corrupt=1,
          progress=False)
    return tmp_path / "out"


@pytest.mark.parametrize("shards", ["empty shard", "no shard"])
def test_empty_train_split_is_one_line(empty_train, shards):
    """Training (with or without batches_per_epoch) and evaluation on a split without samples
    stop at once with one line naming the manifest: no hang, no zero division, no IndexError."""
    if shards == "no shard":
        m = json.loads((empty_train / "manifest.json").read_text())
        m["splits"]["train"]["shards"] = []
        (empty_train / "manifest.json").write_text(json.dumps(m))
    assert describe(empty_train).splits["train"] == 0
    want = f"{empty_train / 'manifest.json'}: split 'train' has no samples"
    for make in (lambda: TrainStream(empty_train, batch_size=4, seed=0),
                 lambda: _take(TrainStream(empty_train, batch_size=4, seed=0, batches_per_epoch=2), 1),
                 lambda: list(eval_batches(empty_train, split="train", batch_size=4))):
        with pytest.raises(UserError) as e:
            make()
        assert str(e.value) == want
