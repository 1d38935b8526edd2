"""Each source format into shards, checked pixel for pixel, label for label, split for split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.celeba import CelebASource
from data_prep.cifar10 import Cifar10Source
from data_prep.folder import FolderSource
from data_prep.mnist import MnistSource
from data_prep.shards import build

from tests import _archives as A


pytestmark = pytest.mark.timeout(60)


def _by_key(rows):
    return {k: (a, y) for k, a, y in rows}


@pytest.mark.parametrize("as_archive", [True, False])
@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_cifar10_pixel_for_pixel(tmp_path, as_archive, encoding):
    batches = A.cifar_arrays(per_batch=4, n_test=3)
    src = A.make_cifar(tmp_path / "dl", batches, as_archive=as_archive)
    m = build(Cifar10Source(src), tmp_path / "out", shard_size=7, workers=1, encoding=encoding, progress=False)
    assert m["dataset"] == "cifar10" and m["resolution"] == 32 and m["channels"] == 3 and m["encoding"] == encoding
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 20, "test": 3}
    assert [len(v["shards"]) for v in m["splits"].values()] == [3, 1]
    got = A.read_shards(tmp_path / "out")
    exp = A.cifar_expected(batches)
    for split in ("train", "test"):
        rows = _by_key(got[split])
        assert sorted(rows) == [f"{i:05d}" for i in range(len(exp[split]))]
        for i, (img, lab) in enumerate(exp[split]):
            a, y = rows[f"{i:05d}"]
            np.testing.assert_array_equal(a, img)
            assert y == lab
    # the train split is written in a fixed shuffled order, the test split in the original one
    assert [k for k, _, _ in got["train"]] != sorted(k for k, _, _ in got["train"])
    assert [k for k, _, _ in got["test"]] == sorted(k for k, _, _ in got["test"])


def test_cifar10_archive_and_folder_agree(tmp_path):
    batches = A.cifar_arrays(per_batch=2, n_test=2, seed=3)
    a = build(Cifar10Source(A.make_cifar(tmp_path / "a", batches)), tmp_path / "oa", shard_size=5, progress=False)
    b = build(Cifar10Source(A.make_cifar(tmp_path / "b", batches, as_archive=False)), tmp_path / "ob", shard_size=5,
              progress=False)
    assert a["source"]["sha256"] == b["source"]["sha256"]
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]


@pytest.mark.parametrize("as_zip", [True, False])
def test_celeba_crop_resize_splits(tmp_path, as_zip):
    imgs = A.celeba_images(10)
    src = A.make_celeba(tmp_path / "dl", imgs, as_zip=as_zip)
    m = build(CelebASource(src, progress=False), tmp_path / "out", shard_size=4, workers=2, progress=False)
    part = dict(line.split() for line in A.celeba_partition(list(imgs)).splitlines())
    expected_splits = {"train": sum(v == "0" for v in part.values()), "valid": sum(v == "1" for v in part.values()),
                       "test": sum(v == "2" for v in part.values())}
    assert {s: v["count"] for s, v in m["splits"].items()} == expected_splits
    assert m["resolution"] == 64 and m["options"]["crop"] == 160 and m["num_classes"] is None
    got = A.read_shards(tmp_path / "out")
    names = {"0": "train", "1": "valid", "2": "test"}
    for split, rows in got.items():
        for key, a, y in rows:
            assert names[part[f"{key}.jpg"]] == split
            np.testing.assert_array_equal(a, A.celeba_expected(imgs[f"{key}.jpg"]))
            assert y == -1


def test_celeba_128_and_crop_option(tmp_path):
    imgs = A.celeba_images(3)
    src = A.make_celeba(tmp_path / "dl", imgs)
    build(CelebASource(src, resolution=128, crop=140, progress=False), tmp_path / "out", shard_size=10, progress=False)
    got = A.read_shards(tmp_path / "out")
    for rows in got.values():
        for key, a, _ in rows:
            np.testing.assert_array_equal(a, A.celeba_expected(imgs[f"{key}.jpg"], 128, 140))


def test_celeba_corrupt_image_skipped_and_counted(tmp_path):
    imgs = A.celeba_images(6)
    imgs["000002.jpg"] = imgs["000002.jpg"][:200]  # truncated JPEG
    imgs["000004.jpg"] = b"not a jpeg at all"
    src = A.make_celeba(tmp_path / "dl", imgs)
    m = build(CelebASource(src, progress=False), tmp_path / "out", shard_size=10, progress=False, max_corrupt=5)
    assert m["skipped"]["count"] == 2 and sorted(m["skipped"]["keys"]) == ["000002", "000004"]
    keys = {k for rows in A.read_shards(tmp_path / "out").values() for k, _, _ in rows}
    assert keys == {"000001", "000003", "000005", "000006"}


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_mnist_idx_pixel_for_pixel(tmp_path, gz, encoding):
    data = A.make_mnist(tmp_path / "dl", gz=gz)
    m = build(MnistSource(tmp_path / "dl"), tmp_path / "out", shard_size=5, encoding=encoding, progress=False)
    assert m["dataset"] == "mnist" and m["channels"] == 1 and m["resolution"] == 28 and m["num_classes"] == 10
    got = A.read_shards(tmp_path / "out")
    for split in ("train", "test"):
        x, y = data[split]
        rows = _by_key(got[split])
        assert len(rows) == len(x)
        for i in range(len(x)):
            a, lab = rows[f"{i:05d}"]
            np.testing.assert_array_equal(a[:, :, 0], x[i])
            assert lab == y[i]


def test_mnist_resolution_32_resizes(tmp_path):
    A.make_mnist(tmp_path / "dl", n_train=3, n_test=2)
    m = build(MnistSource(tmp_path / "dl", resolution=32), tmp_path / "out", shard_size=5, progress=False)
    assert m["resolution"] == 32
    assert all(a.shape == (32, 32, 1) for rows in A.read_shards(tmp_path / "out").values() for _, a, _ in rows)


def _png(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_classes_and_split_folders(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    arrays = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3 if split == "train" else 1):
                a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                rel = f"{split}/{cls}/img.{i}.png"
                _png(root / rel, a)
                arrays[rel] = a
    m = build(FolderSource(root, resolution=16, progress=False), tmp_path / "out", shard_size=4, progress=False)
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 6, "test": 2}
    assert m["num_classes"] == 2 and m["options"]["classes"] == ["cat", "dog"]
    got = A.read_shards(tmp_path / "out")
    for split, rows in got.items():
        for key, a, y in rows:
            rel = next(r for r in arrays if r.startswith(split) and key == r.rsplit(".", 1)[0].replace(".", "_"))
            im = Image.fromarray(arrays[rel]).crop((5, 0, 45, 40)).resize((16, 16), Image.Resampling.LANCZOS)
            np.testing.assert_array_equal(a, np.asarray(im))
            assert y == ["cat", "dog"].index(rel.split("/")[1])


def test_folder_hash_split_is_deterministic_and_grey(tmp_path):
    root = tmp_path / "imgs"
    for i in range(40):
        _png(root / f"a{i}.png", np.full((8, 8, 3), i, np.uint8))
    src = FolderSource(root, resolution=8, channels=1, test_fraction=0.25, progress=False)
    m = build(src, tmp_path / "out", shard_size=100, progress=False)
    assert m["splits"]["train"]["count"] + m["splits"]["test"]["count"] == 40
    assert 3 <= m["splits"]["test"]["count"] <= 20 and m["num_classes"] is None
    got = A.read_shards(tmp_path / "out")
    # the held-out set depends only on the relative paths: adding images moves none of them
    for i in range(40, 60):
        _png(root / f"a{i}.png", np.full((8, 8, 3), i, np.uint8))
    build(FolderSource(root, resolution=8, channels=1, test_fraction=0.25, progress=False), tmp_path / "out2",
          shard_size=7, progress=False)
    test2 = {k for k, _, _ in A.read_shards(tmp_path / "out2")["test"]}
    assert {k for k, _, _ in got["test"]} == {k for k in test2 if int(k[1:]) < 40}
    for _, a, y in got["train"]:
        assert a.shape == (8, 8, 1) and y == -1


def test_manifest_fields(tmp_path):
    A.make_mnist(tmp_path / "dl", n_train=6, n_test=2)
    build(MnistSource(tmp_path / "dl", name="fashion-mnist"), tmp_path / "out", shard_size=4, progress=False)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    import dali_dist

    assert m["tool_version"] == dali_dist.__version__ and m["dataset"] == "fashion-mnist"
    assert len(m["source"]["sha256"]) == 64 and set(m["source"]["files"]) == {
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    for sh in m["splits"]["train"]["shards"]:
        assert set(sh) >= {"name", "count", "sha256", "size"}
        assert (tmp_path / "out" / sh["name"]).stat().st_size == sh["size"]
    # raw PGM members are plain images that any library reads
    blob = next(iter(A.read_shards(tmp_path / "out")["train"]))
    assert blob[1].shape == (28, 28, 1)
    assert not list((tmp_path / "out").rglob(".*"))  # no temporaries or state left behind
