"""SIGKILL at random moments (inside checkpoint writes too), resume with --resume auto: no
incomplete checkpoint is ever picked, training finishes, and on CPU the final weights equal
those of an uninterrupted run. The same for `dali-dist prep` killed while writing shards: a
rerun finishes the job and the output equals an uninterrupted prep byte for byte. Each test
prints how many kill points it tried."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY_GRID

pytestmark = [pytest.mark.slow]

STEPS = 3000
SETS = [a for s in [*TINY_GRID, f"train.steps={STEPS}", "train.checkpoint_every=5", "train.keep_checkpoints=2",
                    "train.ema_beta=0.9"] for a in ("--set", s)]


def start(run_dir, resume):
    cmd = [sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(run_dir), *SETS]
    if resume:
        cmd += ["--resume", "auto"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(ckpt):
    return {f"{n}.{k}": v for n in ("G", "D", "E", "G_ema") for k, v in load_file(ckpt / f"{n}.safetensors").items()}


@pytest.mark.timeout(900)
def test_random_sigkills_never_lose_or_corrupt_the_run(tmp_path):
    t0 = time.time()
    ref = start(tmp_path / "ref", resume=False)
    _, err = ref.communicate(timeout=400)
    assert ref.returncode == 0, err
    took = time.time() - t0  # a whole run here: grows several-fold on a loaded machine

    rng = random.Random(1234)
    run = tmp_path / "killed"
    kills, mid_checkpoint = 0, 0
    # MAX_KILLS kills from import (training starts ~2-4 s after launch) onwards, then one run
    # left to finish: a loaded machine can neither starve the run of progress nor the test of
    # kill points.
    MAX_KILLS = 10
    for attempt in range(MAX_KILLS + 1):
        p = start(run, resume=run.exists())
        if attempt == MAX_KILLS:
            _, err = p.communicate(timeout=400)
            assert p.returncode == 0, err
            break
        time.sleep(rng.uniform(min(1.5, 0.3 * took), min(5.5, 0.9 * took)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            mid_checkpoint += any((run / "checkpoints").glob(".tmp-*")) if (run / "checkpoints").exists() else 0
            continue
        assert p.returncode == 0, p.stderr.read()
        break
    print(f"\n{kills} SIGKILLs, {mid_checkpoint} of them inside a checkpoint write")
    assert kills >= 3
    final = run / "checkpoints" / f"step-{STEPS}"
    a, b = weights(tmp_path / "ref" / "checkpoints" / f"step-{STEPS}"), weights(final)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ prep


def start_prep(src, out):
    cmd = [sys.executable, "-m", "dali_dist.cli", "prep", "mnist", "--source", str(src), "--out", str(out),
           "--shard-size", "500", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # its own session: SIGKILL reaches the encoding workers too, as when a node dies
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(600)
def test_random_sigkills_during_prep_leave_byte_identical_shards(tmp_path):
    from tests._archives import make_mnist
    from data_prep.verify import verify

    make_mnist(tmp_path / "src", n_train=20000, n_test=2000)
    t0 = time.time()
    ref = start_prep(tmp_path / "src", tmp_path / "ref")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    took = time.time() - t0  # 3-8 s here: ~4 s to start, the rest to write 44 shards

    rng = random.Random(4321)
    kills, mid_shard = 0, 0
    # Each round: a fresh output folder, up to MAX_KILLS kills, then one run left to finish. A
    # rerun costs its start-up again, so on a loaded machine random kills alone could starve the
    # job of its end (CI once saw 60 kills in a row); the last run shows the resume completes.
    MAX_KILLS = 8
    for round_ in range(4):
        out = tmp_path / f"killed-{round_}"
        for attempt in range(MAX_KILLS + 1):
            p = start_prep(tmp_path / "src", out)
            if attempt == MAX_KILLS:
                _, err = p.communicate(timeout=300)
                assert p.returncode == 0, err
                break
            time.sleep(rng.uniform(0.1, 1.1 * took))  # anywhere from import to the manifest
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                kills += 1
                mid_shard += any(out.glob("*/.shard-*.tmp.*"))  # a shard was being written
                continue
            assert p.returncode == 0, p.stderr.read()
            break
        assert not verify(out, progress=False)["problems"]
        assert tree(out) == tree(tmp_path / "ref")  # byte for byte, manifest included; no leftovers
    print(f"\n{kills} SIGKILLs of `dali-dist prep` (4 rounds), {mid_shard} of them while a shard was being written")
    assert kills >= 4 and mid_shard >= 1
