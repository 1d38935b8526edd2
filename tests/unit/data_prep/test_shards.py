"""Runs of the shard writer: byte-identical output, atomic shards, resuming, --force, and the
real Fashion-MNIST round trip (the `python -m data_prep.*` entry points:
tests/integration/test_prep_cli.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dali_dist.errors import UserError
from data_prep import shards
from data_prep.cifar10 import Cifar10Source
from data_prep.mnist import MnistSource
from data_prep.shards import build

from tests import _archives as A


FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.timeout(60)


def _digest_tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_input_same_bytes_any_worker_count(tmp_path):
    batches = A.cifar_arrays(per_batch=6, n_test=4)
    src = A.make_cifar(tmp_path / "dl", batches)
    build(Cifar10Source(src), tmp_path / "a", shard_size=5, workers=1, progress=False)
    build(Cifar10Source(src), tmp_path / "b", shard_size=5, workers=3, progress=False)
    da, db = _digest_tree(tmp_path / "a"), _digest_tree(tmp_path / "b")
    assert da == db and len(da) == 1 + 6 + 1  # manifest + 6 train shards + 1 test shard
    # tar headers: fixed mtime, owner and mode
    import tarfile

    with tarfile.open(tmp_path / "a" / "train" / "shard-000000.tar") as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


class _Boom(Exception):
    pass


def test_failed_run_leaves_no_complete_looking_shard_and_resumes(tmp_path, monkeypatch):
    A.make_mnist(tmp_path / "dl", n_train=20, n_test=4)
    clean = build(MnistSource(tmp_path / "dl"), tmp_path / "clean", shard_size=4, progress=False)

    src = MnistSource(tmp_path / "dl")
    calls = {"n": 0}
    real_load = src.load

    def flaky(split, i):
        calls["n"] += 1
        if calls["n"] == 11:  # in the middle of the third shard
            raise _Boom()
        return real_load(split, i)

    monkeypatch.setattr(src, "load", flaky)
    out = tmp_path / "out"
    with pytest.raises(_Boom):
        build(src, out, shard_size=4, progress=False)
    assert not (out / "manifest.json").exists()
    names = sorted(p.name for p in (out / "train").iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar"]  # the broken one never got its name
    state = json.loads((out / shards.STATE_NAME).read_text())
    assert sorted(state["shards"]) == ["train/shard-000000.tar", "train/shard-000001.tar"]

    written = []
    real_write = shards.write_shard
    monkeypatch.setattr(shards, "write_shard", lambda *a: written.append(a[1]) or real_write(*a))
    m = build(MnistSource(tmp_path / "dl"), out, shard_size=4, progress=False)
    assert "train/shard-000000.tar" not in written and "train/shard-000001.tar" not in written
    assert "train/shard-000002.tar" in written
    assert m["splits"] == clean["splits"] and _digest_tree(out) == _digest_tree(tmp_path / "clean")

    # a complete run is skipped entirely; a damaged shard is noticed and rewritten
    written.clear()
    build(MnistSource(tmp_path / "dl"), out, shard_size=4, progress=False)
    assert written == []
    p = out / "train" / "shard-000003.tar"
    p.write_bytes(p.read_bytes()[:-1024] + b"\1" * 1024)
    build(MnistSource(tmp_path / "dl"), out, shard_size=4, progress=False)
    assert written == ["train/shard-000003.tar"]
    assert _digest_tree(out) == _digest_tree(tmp_path / "clean")

    # --force rewrites everything
    written.clear()
    build(MnistSource(tmp_path / "dl"), out, shard_size=4, force=True, progress=False)
    assert len(written) == len(clean["splits"]["train"]["shards"]) + len(clean["splits"]["test"]["shards"])


def test_other_options_need_force(tmp_path):
    A.make_mnist(tmp_path / "dl", n_train=8, n_test=2)
    build(MnistSource(tmp_path / "dl"), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(UserError, match="--force"):
        build(MnistSource(tmp_path / "dl"), tmp_path / "out", shard_size=3, progress=False)
    m = build(MnistSource(tmp_path / "dl"), tmp_path / "out", shard_size=3, force=True, progress=False)
    assert len(m["splits"]["train"]["shards"]) == 3
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [f"shard-00000{i}.tar" for i in range(3)]


def test_corrupt_threshold(tmp_path):
    imgs = A.celeba_images(5)
    for k in ("000001.jpg", "000002.jpg"):
        imgs[k] = b"garbage"
    src = A.make_celeba(tmp_path / "dl", imgs)
    from data_prep.celeba import CelebASource

    with pytest.raises(UserError, match="2 corrupt or missing images"):
        build(CelebASource(src, progress=False), tmp_path / "out", shard_size=10, max_corrupt=1, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_closing_line_counts_written_kept_and_skipped(tmp_path, capsys):
    """The line prep ends with: samples per split, shards written by this run against shards
    an earlier run left that still match, and the inputs skipped as corrupt."""
    imgs = A.celeba_images(5)
    imgs["000002.jpg"] = b"garbage"
    src = A.make_celeba(tmp_path / "dl", imgs)
    from data_prep.celeba import CelebASource

    out = tmp_path / "out"
    build(CelebASource(src, progress=False), out, shard_size=2, max_corrupt=1, progress=True)
    first = capsys.readouterr().err.strip().splitlines()[-1]
    m = json.loads((out / "manifest.json").read_text())
    n = sum(len(v["shards"]) for v in m["splits"].values())
    counts = {s: v["count"] for s, v in m["splits"].items()}
    assert counts == {"train": 2, "valid": 1, "test": 1} and n == 4  # 5 images, one corrupt
    assert first == (f"{out}: celeba train 2, valid 1, test 1 in 4 shards (4 written, 0 kept); "
                     "skipped 1 corrupt or missing input(s)")
    (out / "valid" / "shard-000000.tar").unlink()  # one shard lost: only it is rewritten
    build(CelebASource(src, progress=False), out, shard_size=2, max_corrupt=1, progress=True)
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "(1 written, 3 kept); skipped 1 corrupt or missing input(s)")
    build(CelebASource(src, progress=False), out, shard_size=2, max_corrupt=1, progress=True)
    assert "(0 written, 4 kept)" in capsys.readouterr().err


def test_prep_app_commands():
    from typer.testing import CliRunner

    from data_prep.cli import prep_app

    r = CliRunner().invoke(prep_app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("cifar10", "celeba", "mnist", "folder", "grid2d", "verify"):
        assert cmd in r.output


@pytest.mark.timeout(120)
def test_fashion_mnist_round_trip(tmp_path):
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    from dali_dist.data import eval_batches
    from data_prep.mnist import read_idx

    m = build(MnistSource(FASHION), tmp_path / "fm", shard_size=10000, workers=2, encoding="raw", progress=False)
    assert m["dataset"] == "fashion-mnist"
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 60000, "test": 10000}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz", 2051)
        y = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz", 2049)
        seen = np.zeros(len(x), bool)
        for xb, yb, keys in eval_batches(tmp_path / "fm", split=split, batch_size=5000, as_uint8=True):
            idx = np.array([int(k) for k in keys])
            np.testing.assert_array_equal(xb.numpy()[:, 0], x[idx])
            np.testing.assert_array_equal(yb.numpy(), y[idx])
            seen[idx] = True
        assert seen.all()


def test_cifar_download_checks_md5(tmp_path):
    """--download's fetch-verify-rename, through a file:// URL (no network here)."""
    import hashlib

    from data_prep.cifar10 import download

    archive = A.make_cifar(tmp_path / "mirror", A.cifar_arrays(per_batch=1, n_test=1))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    got = download(tmp_path / "dl", url=archive.as_uri(), md5=md5, progress=False)
    assert got == tmp_path / "dl" / "cifar-10-python.tar.gz" and got.read_bytes() == archive.read_bytes()
    with pytest.raises(UserError, match="md5"):
        download(tmp_path / "dl2", url=archive.as_uri(), md5="0" * 32, progress=False)
    assert not any((tmp_path / "dl2").iterdir())  # nothing half-downloaded left behind
    with pytest.raises(UserError, match="download failed"):
        download(tmp_path / "dl3", url=(tmp_path / "missing.tar.gz").as_uri(), md5=md5, progress=False)
