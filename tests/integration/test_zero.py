"""DeepSpeed ZeRO-1/2 (train.strategy=zero1|zero2): two engines, one process and two (gloo),
safe optimizer partitions, exact resume in one process, clear refusals."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY_GRID

pytest.importorskip("deepspeed", reason="pip install 'dali-dist[deepspeed]'")
pytestmark = [pytest.mark.slow]

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def sets(*extra):
    return [a for s in [*TINY_GRID, *extra] for a in ("--set", s)]


def train_one(run_dir, *extra, resume=False):
    cmd = [sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(run_dir), *sets(*extra)]
    return subprocess.run(cmd + (["--resume", "auto"] if resume else []), capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=REPO)


def train_two(run_dir, *extra, resume=False, port=29571):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
           "--main_process_port", str(port), "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(run_dir),
           *sets(*extra)]
    return subprocess.run(cmd + (["--resume", "auto"] if resume else []), capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=REPO)


def weights(ckpt):
    return {f"{n}.{k}": v for n in ("G", "D", "E") for k, v in load_file(ckpt / f"{n}.safetensors").items()}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", ["zero1", "zero2"])
def test_one_process_resume_reproduces_the_uninterrupted_run(tmp_path, stage):
    # a constant learning rate, so that a run of 8 steps is the first half of a run of 16
    same = (f"train.strategy={stage}", "optim.schedule=constant")
    r = train_one(tmp_path / "a", *same, "train.steps=16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert train_one(tmp_path / "b", *same, "train.steps=8").returncode == 0
    r = train_one(tmp_path / "b", *same, "train.steps=16", resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a, b = weights(tmp_path / "a/checkpoints/step-16"), weights(tmp_path / "b/checkpoints/step-16")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the optimizer partitions are plain tensors: they load without unpickling any object
    part = torch.load(tmp_path / "a/checkpoints/step-16/zero/optim_ge-rank0.pt", weights_only=True)
    assert part["base_optimizer_state"]["state"][0]["step"].item() == 16


@pytest.mark.timeout(600)
def test_two_processes_zero2_agree_resume_and_refuse_another_world_size(tmp_path):
    r = train_two(tmp_path, "train.strategy=zero2", "train.steps=10")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    ckpt = tmp_path / "checkpoints/step-10"
    assert sorted(p.name for p in (ckpt / "zero").iterdir()) == [
        "optim_d-rank0.pt", "optim_d-rank1.pt", "optim_ge-rank0.pt", "optim_ge-rank1.pt"]
    # each rank holds half of each flat optimizer partition
    halves = [torch.load(ckpt / f"zero/optim_d-rank{r}.pt", weights_only=True) for r in (0, 1)]
    n_d = sum(t.numel() for t in load_file(ckpt / "D.safetensors").values())
    assert sum(h["single_partition_of_fp32_groups"][0].numel() for h in halves) == n_d
    # weights of both replicas are compared at every checkpoint; resume continues the run
    r = train_two(tmp_path, "train.strategy=zero2", "train.steps=16", resume=True, port=29572)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and (tmp_path / "checkpoints/step-16/zero/optim_ge-rank1.pt").is_file()
    # ZeRO partitions belong to ranks: one process cannot take them over
    r = train_one(tmp_path, "train.strategy=zero2", "train.steps=20", resume=True)
    assert r.returncode == 2
    assert "written by 2 processes" in r.stderr and "same number of processes" in r.stderr
    assert "Traceback" not in r.stderr


def test_zero_refuses_what_cannot_work(tmp_path):
    r = train_one(tmp_path, "train.strategy=zero2", "train.update_order=simultaneous")
    assert r.returncode == 2 and "needs train.update_order=alternating" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(tmp_path),
                        *sets("train.steps=2")], capture_output=True, text=True, timeout=120,
                       env={**ENV, "ACCELERATE_USE_DEEPSPEED": "true"}, cwd=REPO)
    assert r.returncode == 2 and "train.strategy=zero2" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(600)
def test_a_partition_that_does_not_fit_is_one_line(tmp_path):
    """A checkpoint's weights fit but a partition file is foreign (another model's, tampered, or
    not a mapping): one line naming the file, before DeepSpeed copies anything."""
    run = tmp_path / "run"
    assert train_one(run, "train.strategy=zero1", "train.steps=4", "train.checkpoint_every=4").returncode == 0
    part = run / "checkpoints/step-4/zero/optim_d-rank0.pt"
    good = torch.load(part, weights_only=True)

    def tampered(edit):
        sd = torch.load(part, weights_only=True)
        edit(sd)
        return sd

    cases = {
        "shapes [(5,)]": tampered(lambda sd: sd["single_partition_of_fp32_groups"].__setitem__(0, torch.zeros(5))),
        "exp_avg: shape (3,)": tampered(lambda sd: sd["base_optimizer_state"]["state"][0].__setitem__("exp_avg", torch.zeros(3))),
        "not a mapping": [1, 2, 3],
    }
    for expect, bad in cases.items():
        torch.save(bad, part)
        r = train_one(run, "train.strategy=zero1", "train.steps=6", "train.checkpoint_every=4", resume=True)
        assert r.returncode == 2, (expect, r.stderr[-2000:])
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and str(part) in errors[0] and expect in errors[0], (expect, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
    torch.save(good, part)  # and the genuine file still resumes
    r = train_one(run, "train.strategy=zero1", "train.steps=6", "train.checkpoint_every=4", resume=True)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
