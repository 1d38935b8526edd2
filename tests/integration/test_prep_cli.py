"""`dali-dist prep` and the `python -m data_prep.*` entry points in a separate process: exit
codes, one `error:` line, `verify` on good and damaged shards, and archives that would
inflate far beyond their header refused without reading them all."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from tests import _archives as A
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(60)


def test_subprocess_exit_code_and_one_line(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0" * 10)
    r = subprocess.run([sys.executable, "-m", "data_prep.cifar10", "--source", str(path), "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], r.stderr


def test_mnist_gzip_bomb_and_absurd_header_are_refused_without_reading_it_all(tmp_path):
    """A small .gz that inflates far beyond its header, or a header claiming terabytes: one
    line, exit 2, and only the announced bytes are ever decompressed."""
    import gzip
    import resource

    from tests.conftest import run_cli

    make_mnist = A.make_mnist
    make_mnist(tmp_path / "bomb")
    with gzip.GzipFile(tmp_path / "bomb" / "train-images-idx3-ubyte.gz", "wb", mtime=0) as f:
        f.write((0x00000803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (12, 28, 28)))
        for _ in range(64):  # 1 GiB of zeros after the 9,408 bytes the header announces (~1 MB on disk)
            f.write(bytes(16 << 20))
    make_mnist(tmp_path / "huge")
    with gzip.GzipFile(tmp_path / "huge" / "train-images-idx3-ubyte.gz", "wb", mtime=0) as f:
        f.write((0x00000803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (4_000_000_000, 28, 28)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    for name, expect in (("bomb", "holds more than 9408 data bytes"), ("huge", "not an idx file")):
        r = run_cli("prep", "mnist", "--source", str(tmp_path / name), "--out", str(tmp_path / f"out-{name}"), "--quiet")
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    # the child never held the inflated gigabyte (ru_maxrss is in KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < max(before, 1) + (900 << 10)


def test_cli_module_and_verify(tmp_path):
    A.make_mnist(tmp_path / "dl", n_train=9, n_test=3)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "data_prep.mnist", "--source", str(tmp_path / "dl"), "--out", str(out),
                        "--shard-size", "4", "--workers", "1", "--encoding", "raw"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "data_prep.verify", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "12 samples" in r.stdout, r.stderr
    shard = out / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1536])
    r = subprocess.run([sys.executable, "-m", "data_prep.verify", str(out), "--quiet"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "shard-000001.tar" in r.stderr and "Traceback" not in r.stderr


def test_grid2d_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep.grid2d", "--out", str(tmp_path / "g"), "--num-train", "3000",
                        "--num-test", "500", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert m["splits"]["train"]["count"] == 3000 and m["splits"]["test"]["count"] == 500
