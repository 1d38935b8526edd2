"""Two training processes on CPU (gloo) under `accelerate launch`, as a cluster would run them."""

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, TINY_GRID

pytestmark = [pytest.mark.multiprocess]


def launch(run_dir, *extra, port=29561):
    sets = [a for s in [*TINY_GRID, *extra] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
           "--main_process_port", str(port), "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(run_dir), *sets]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)


@pytest.mark.timeout(300)
def test_two_processes_train_agree_and_resume(tmp_path):
    r = launch(tmp_path, "train.steps=20", "train.batch_size=64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout and "32 per process" in r.stdout
    # replicas are compared at every checkpoint (the run fails if they differ); resume works too
    r = launch(tmp_path, "train.steps=30", "train.batch_size=64")
    # (the launcher reports a failed worker as exit 1, whatever code the worker chose)
    assert r.returncode != 0 and "error: " in r.stderr and "--resume auto" in r.stderr
    sets = ["--resume", "auto"]
    r = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
         "--main_process_port", "29562", "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(tmp_path),
         *[a for s in [*TINY_GRID, "train.steps=30", "train.batch_size=64"] for a in ("--set", s)], *sets],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    assert set(load_file(tmp_path / "checkpoints/step-30/G.safetensors"))


@pytest.mark.timeout(300)
def test_sigma_held_for_G_still_all_reduces_every_gradient(tmp_path):
    """model.g_through_sigma=false gives E's variance head its gradient from a second, plain
    (not DDP-wrapped) pass: that gradient must still be averaged over the ranks, or the
    replicas compared at each checkpoint would differ and the run would fail."""
    r = launch(tmp_path, "train.steps=20", "model.g_through_sigma=false", port=29567)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "step-20" / "train_state.json").is_file()


@pytest.mark.timeout(300)
def test_global_batch_must_divide_by_world_size(tmp_path):
    r = launch(tmp_path, "train.steps=5", "train.batch_size=63", port=29563)
    assert r.returncode != 0 and "must divide evenly by the 2 processes" in r.stderr
    # a config error is the same on every rank: said once, by rank 0 (the launcher's own
    # failure report follows it; torchrun prints one for any failed worker)
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        "error: config: train.batch_size=63 is global and must divide evenly by the 2 processes"]


@pytest.mark.timeout(300)
def test_stop_under_launcher_exits_cleanly_and_records_75(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "STOP").touch()
    r = launch(tmp_path, "train.steps=20", port=29564)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "exit_code").read_text() == "75\n"
    # several processes poll the stop request every STOP_POLL_EVERY (10) steps, together
    assert (tmp_path / "checkpoints" / "step-10" / "train_state.json").is_file()
    assert not (tmp_path / "checkpoints" / "step-20").exists()


@pytest.mark.timeout(120)
def test_cpu_flag_with_several_processes_is_refused_not_run_alone(tmp_path):
    sets = [a for s in [*TINY_GRID, "train.steps=3"] for a in ("--set", s)]
    r = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dali_dist.train", "--config", "grid2d",
         "--run-dir", str(tmp_path), *sets],
        capture_output=True, text=True, timeout=100, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )
    assert r.returncode != 0
    assert "asked for 2 processes but only 1 started" in r.stderr
    assert not (tmp_path / "checkpoints").exists()


def _worker_pid(launcher_pid, rank):
    """The training process of ``rank`` among the launcher's descendants."""
    for _ in range(100):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                env = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if f"RANK={rank}".encode() in env and ppid != 1 and b"dali_dist.train" in open(f"/proc/{entry}/cmdline", "rb").read():
                parent = ppid
                while parent not in (0, 1, launcher_pid):
                    parent = int(open(f"/proc/{parent}/stat").read().rsplit(")", 1)[1].split()[1])
                if parent == launcher_pid:
                    return int(entry)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} worker under {launcher_pid}")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_rank_that_stops_answering_is_named(tmp_path):
    """SIGSTOP rank 1 mid-run: rank 0 must fail within the process-group timeout and say that
    rank 1 stopped answering, instead of hanging or blaming nobody."""
    sets = [a for s in [*TINY_GRID, "train.steps=1000000", "train.checkpoint_every=1000000", "train.dist_timeout_s=20"]
            for a in ("--set", s)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
           "--main_process_port", "29565", "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(tmp_path), *sets]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    victim = None
    try:
        deadline = time.time() + 90
        while not ((tmp_path / "stats.jsonl").exists() and (tmp_path / "stats.jsonl").stat().st_size) and time.time() < deadline:
            time.sleep(0.2)
        victim = _worker_pid(launcher.pid, 1)
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.time()
        _, err = launcher.communicate(timeout=150)
    finally:
        if victim is not None:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "rank(s) 1 stopped answering" in err, err[-3000:]
    assert "error: rank(s) 1 stopped answering" in err  # the one-line error of rank 0
    assert time.time() - stopped_at < 120


@pytest.mark.timeout(300)
def test_two_simulated_nodes_on_loopback_train_and_agree(tmp_path):
    """Two launchers, one per "node" (machine_rank 0 and 1), rendezvous on 127.0.0.1, as
    slurm/node_launch.sh starts them on a real cluster; replicas are compared at every checkpoint."""
    sets = [a for s in [*TINY_GRID, "train.steps=12", "train.checkpoint_every=6"] for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-multi-node.yaml"),
             "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
             "--main_process_ip", "127.0.0.1", "--main_process_port", "29566",
             "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(tmp_path), *sets],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=240) for p in nodes]
    for p, (out, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es)" in outs[0][0]
    assert (tmp_path / "checkpoints/step-12/train_state.json").is_file()
    assert (tmp_path / "exit_code").read_text() == "0\n"
