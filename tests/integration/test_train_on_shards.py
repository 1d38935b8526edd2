"""Training reads prepared shards: images (MNIST idx -> shards -> DCGAN-28) and 2D points."""

import json

import pytest

from dali_dist.config import load_config
from dali_dist.errors import UserError
from dali_dist.train import train
from tests._archives import make_mnist
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    make_mnist(root / "raw", n_train=40, n_test=10)
    r = run_cli("prep", "mnist", "--source", str(root / "raw"), "--out", str(root / "shards"), "--shard-size", "16", "--quiet")
    assert r.returncode == 0, r.stderr
    return root / "shards"


TINY_IMG = ["model.width=8", "model.latent_dim=8", "train.batch_size=8", "train.log_every=2",
            "train.sample_every=4", "train.checkpoint_every=4", "tracking.enabled=false", "data.num_workers=0"]


@pytest.mark.timeout(180)
def test_dcgan_trains_on_mnist_shards_and_resumes(tmp_path, mnist_shards):
    cfg = load_config("mnist", [*TINY_IMG, "train.steps=6"], data=str(mnist_shards))
    assert train(cfg, tmp_path) == 0
    rec = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 6 and rec["loss_e"] > 0
    assert (tmp_path / "images" / "samples-0000004.png").is_file()
    assert (tmp_path / "images" / "recon-0000004.png").is_file()
    state = json.loads((tmp_path / "checkpoints" / "step-6" / "train_state.json").read_text())
    assert state["batches_consumed"] == 6  # 40 train images / batch 8 = 5 per epoch: crossed an epoch


def test_shards_that_do_not_fit_the_config_are_refused(tmp_path, mnist_shards):
    cfg = load_config("mnist", [*TINY_IMG, "train.steps=2", "data.resolution=32"], data=str(mnist_shards))
    with pytest.raises(UserError, match="images are 28px with 1 channel"):
        train(cfg, tmp_path / "a")
    cfg = load_config("grid2d", ["train.steps=2", "train.batch_size=8", "tracking.enabled=false"], data=str(mnist_shards))
    with pytest.raises(UserError, match="needs 2D points"):
        train(cfg, tmp_path / "b")
    # refused before the run directory is made (no config.yaml, no images/ left behind)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.timeout(120)
def test_grid2d_trains_from_prepared_points(tmp_path):
    r = run_cli("prep", "grid2d", "--out", str(tmp_path / "g"), "--num-train", "4000", "--num-test", "1000", "--quiet")
    assert r.returncode == 0, r.stderr
    cfg = load_config("grid2d", ["train.steps=4", "train.batch_size=64", "tracking.enabled=false",
                                 "train.sample_every=0"], data=str(tmp_path / "g"))
    assert train(cfg, tmp_path / "run") == 0


@pytest.mark.timeout(180)
def test_trainer_follows_the_corrupt_data_policy(tmp_path, mnist_shards):
    """data.on_corrupt: error stops with one line naming the shard; skip trains on and counts."""
    from tests import _corrupt

    shards = _corrupt.copy(mnist_shards, tmp_path / "shards")
    _corrupt.flip_bytes(_corrupt.shard_path(shards, "train", 0))  # same size, wrong sha256
    bad = _corrupt.shard_path(shards, "train", 0).name
    with pytest.raises(UserError, match=bad):
        train(load_config("mnist", [*TINY_IMG, "train.steps=6"], data=str(shards)), tmp_path / "strict")
    cfg = load_config("mnist", [*TINY_IMG, "train.steps=6", "data.on_corrupt=skip"], data=str(shards))
    assert train(cfg, tmp_path / "lenient") == 0
    rec = json.loads((tmp_path / "lenient" / "stats.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 6 and rec["corrupt_samples_skipped"] == 16  # the damaged shard, left out at the start


@pytest.mark.timeout(180)
def test_a_stop_signal_to_every_process_of_the_job_still_checkpoints(tmp_path, mnist_shards):
    """Slurm signals every process of a step, data workers included: the run must still end
    with a checkpoint and exit 75, not with "DataLoader worker killed by signal"."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    run = tmp_path / "run"
    sets = [*TINY_IMG, "data.num_workers=1", "train.steps=100000", "train.checkpoint_every=100000"]
    p = subprocess.Popen([sys.executable, "-m", "dali_dist.cli", "train", "--config", "mnist", "--data", str(mnist_shards),
                          "--run-dir", str(run), *[a for s in sets for a in ("--set", s)]],
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "stats.jsonl").is_file() or len((run / "stats.jsonl").read_text().splitlines()) < 2:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.5)
        os.killpg(p.pid, signal.SIGTERM)  # the whole process group: trainer and data worker
        _, err = p.communicate(timeout=120)
    finally:  # a trainer that hangs instead of stopping must not outlive the test
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 75, err[-3000:]
    assert "Traceback" not in err and (run / "exit_code").read_text().strip() == "75"
    assert list((run / "checkpoints").glob("step-*"))


@pytest.mark.timeout(120)
def test_workers_still_end_when_their_owner_exits_without_closing_them(tmp_path, mnist_shards):
    """Workers ignore a job-wide SIGTERM, but not their parent's: a program that leaves a
    loader open must still exit (multiprocessing terminates daemonic workers, then joins)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    script = ("import itertools\nfrom dali_dist.data import TrainStream\n"
              f"s = TrainStream({str(mnist_shards)!r}, batch_size=4, seed=0, num_workers=2)\n"
              "it = s.batches()  # still referenced at exit: multiprocessing's atexit ends the workers\n"
              "for _ in itertools.islice(it, 3):\n    pass\nprint('leaving', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "leaving" in r.stdout, r.stderr[-2000:]
