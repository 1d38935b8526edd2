"""Two ranks under `accelerate launch` reading damaged shards: with "skip" both yield the same
number of batches and finish; with "error" the rank that meets the damage exits with one line
and the launcher stops the other at once (no wait for the process-group timeout)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time

import pytest

from dali_dist.seeding import derive_seed
from data_prep.mnist import MnistSource
from data_prep.shards import build

from tests import _archives as A
from tests import _corrupt as C
from tests.conftest import REPO


pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(300)]
PG_TIMEOUT_S = 600  # far longer than the test may take: ending by timeout would fail it


def launch(source, policy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
           "--main_process_port", str(port), str(REPO / "tests/_corrupt_ranks.py"), str(source), policy, str(PG_TIMEOUT_S)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    return r, time.time() - t0


@pytest.fixture
def data(tmp_path):
    A.make_mnist(tmp_path / "dl", n_train=230, n_test=10, gz=False)
    build(MnistSource(tmp_path / "dl"), tmp_path / "png", shard_size=20, encoding="png", progress=False)
    return tmp_path / "png"


def test_skip_two_ranks_finish_with_equal_batches(data):
    C.shard_path(data, "train", 0).unlink()
    for i in (3, 6, 9):
        C.rewrite(data, "train", i, C.garbage_image(set(C.keys_of(C.shard_path(data, "train", i))[::2])))
    r, _ = launch(data, "skip")
    assert r.returncode == 0, r.stderr[-3000:]
    bpe = 230 // 16
    for rank in (0, 1):
        assert f"rank {rank}: {2 * bpe} batches" in r.stdout
    assert "warning: " in r.stderr and "missing shard" in r.stderr


def test_error_on_one_rank_stops_both_quickly(data):
    # a shard that only rank 1 reads in epoch 0 (rank 1's region is the second half of the
    # epoch's shard order, of which it reads 8 x 14 samples)
    counts = [20] * 11 + [10]
    perm = list(range(12))
    random.Random(derive_seed(0, "shards", 0)).shuffle(perm)
    pos, victim = 0, None
    for i in perm:
        if pos >= 115 and pos + counts[i] <= 115 + 8 * 14:
            victim = i
            break
        pos += counts[i]
    assert victim is not None
    path = C.shard_path(data, "train", victim)
    C.flip_bytes(path)
    r, took = launch(data, "error")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors and str(path) in errors[0] and "sha256 differs" in errors[0], r.stderr[-3000:]
    assert "rank 0:" not in r.stdout and took < PG_TIMEOUT_S / 3
    print(f"\nerror on rank 1 ended the 2-rank launch in {took:.0f} s")
