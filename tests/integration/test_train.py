"""The trainer end to end on the 2D grid: files, exact resume, stop-and-requeue, EMA, bf16."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dali_dist.checkpoint import complete_checkpoints, load_export
from dali_dist.evaluate import evaluate_checkpoint
from dali_dist.train import EXIT_REQUEUE, train


def weights(ckpt):
    return {f"{n}.{k}": v for n in ("G", "D", "E") for k, v in load_file(ckpt / f"{n}.safetensors").items()}


@pytest.mark.timeout(120)
def test_run_directory_layout_and_evaluation(tmp_path, tiny_grid_cfg):
    cfg = tiny_grid_cfg("train.steps=20", "train.sample_every=10")
    assert train(cfg, tmp_path) == 0
    assert (tmp_path / "config.yaml").is_file()
    records = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert {"loss_d", "loss_g", "loss_e", "sigma_mean", "images_per_s", "lr_g"} <= set(records[-1])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["samples-0000010.png", "samples-0000020.png"]
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [10, 20]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    exp = load_export(tmp_path / "checkpoints" / "step-20")
    assert exp.meta["step"] == 20 and exp.E is not None
    m = evaluate_checkpoint(tmp_path / "checkpoints" / "step-20" / "export", ["modes"])
    assert m["step"] == 20 and m["num_samples"] == 200
    assert 0 <= m["modes_captured"] <= 25 and 0 <= m["high_quality_pct"] <= 100


def stop_after_calls(monkeypatch, n):
    """Make the trainer see a stop request at step n (it checks once per step)."""
    calls = {"n": 0}

    def requested(self):
        calls["n"] += 1
        return calls["n"] >= n

    monkeypatch.setattr("dali_dist.train.StopRequest.requested", requested)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("order, variant", [("alternating", "dali"), ("simultaneous", "dali"), ("alternating", "ali")])
def test_resume_reproduces_uninterrupted_run_exactly(tmp_path, tiny_grid_cfg, order, variant, monkeypatch):
    cfg = tiny_grid_cfg("train.steps=30", f"train.update_order={order}", "train.ema_beta=0.9", f"model.variant={variant}")
    assert train(cfg, tmp_path / "a") == 0
    with monkeypatch.context() as m:
        stop_after_calls(m, 17)
        assert train(cfg, tmp_path / "b") == EXIT_REQUEUE
    assert [s for s, _ in complete_checkpoints(tmp_path / "b")] == [10, 17]
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(cfg, tmp_path / "b", resume="auto") == 0
    a, b = weights(tmp_path / "a/checkpoints/step-30"), weights(tmp_path / "b/checkpoints/step-30")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for f in ("G_ema.safetensors", "export/G.safetensors", "optim_ge.pt"):
        if f.endswith(".pt"):
            ea = torch.load(tmp_path / "a/checkpoints/step-30" / f, weights_only=True)["state"]
            eb = torch.load(tmp_path / "b/checkpoints/step-30" / f, weights_only=True)["state"]
            assert all(torch.equal(ea[i]["exp_avg"], eb[i]["exp_avg"]) for i in ea)
        else:
            ea = load_file(tmp_path / "a/checkpoints/step-30" / f)
            eb = load_file(tmp_path / "b/checkpoints/step-30" / f)
            assert all(torch.equal(ea[k], eb[k]) for k in ea), f


@pytest.mark.timeout(120)
def test_stop_file_checkpoints_and_exits_75(tmp_path, tiny_grid_cfg):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "STOP").touch()
    cfg = tiny_grid_cfg("train.steps=50")
    assert train(cfg, tmp_path) == EXIT_REQUEUE
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1]
    assert (tmp_path / "exit_code").read_text() == "75\n"


@pytest.mark.timeout(120)
def test_export_holds_ema_weights_when_enabled(tmp_path, tiny_grid_cfg):
    cfg = tiny_grid_cfg("train.steps=10", "train.ema_beta=0.5")
    assert train(cfg, tmp_path) == 0
    ck = tmp_path / "checkpoints/step-10"
    live, ema, export = (load_file(ck / f) for f in ("G.safetensors", "G_ema.safetensors", "export/G.safetensors"))
    params = [k for k in ema if k.endswith(("weight", "bias"))]  # BN statistics are re-estimated
    assert all(torch.equal(ema[k], export[k]) for k in params)
    assert any(not torch.equal(live[k], ema[k]) for k in live if k.endswith("weight"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", ["dali", "ali"])
def test_export_keeps_e_live_beside_the_averaged_g(tmp_path, tiny_grid_cfg, variant):
    """With EMA on, the export averages G only: E (on D's trunk for DALI, on x for ALI) is the
    live one, which reconstructs better beside the averaged G."""
    cfg = tiny_grid_cfg("train.steps=10", "train.ema_beta=0.5", f"model.variant={variant}")
    assert train(cfg, tmp_path) == 0
    ck = tmp_path / "checkpoints/step-10"
    assert (ck / "G_ema.safetensors").is_file() and not (ck / "E_ema.safetensors").exists()
    live, export = load_file(ck / "E.safetensors"), load_file(ck / "export/E.safetensors")
    assert live.keys() == export.keys()
    assert all(torch.equal(live[k], export[k]) for k in live)


@pytest.mark.timeout(120)
def test_bf16_autocast_trains_on_cpu(tmp_path, tiny_grid_cfg):
    cfg = tiny_grid_cfg("train.steps=10", "train.mixed_precision=bf16")
    assert train(cfg, tmp_path) == 0
    rec = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    import math

    losses = {k: v for k, v in rec.items() if k.startswith("loss_")}
    assert losses and all(math.isfinite(v) for v in losses.values()), rec
    assert rec["step"] == 10 and rec["skipped_d_total"] == 0 and rec["skipped_ge_total"] == 0


@pytest.mark.timeout(120)
def test_retention_keeps_newest_and_every_kth(tmp_path, tiny_grid_cfg):
    cfg = tiny_grid_cfg("train.steps=50", "train.checkpoint_every=10", "train.keep_checkpoints=2", "train.keep_every=20")
    assert train(cfg, tmp_path) == 0
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [20, 40, 50]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sets", [
    ["model.variant=dali-l2"], ["model.variant=dali-f"], ["model.variant=gan"], ["model.variant=ali"],
    ["model.adversarial=hinge"], ["model.adversarial=wgan-gp"],
])
def test_every_variant_trains_checkpoints_and_evaluates(tmp_path, tiny_grid_cfg, sets):
    cfg = tiny_grid_cfg("train.steps=10", *sets)
    assert train(cfg, tmp_path) == 0
    exp = load_export(tmp_path / "checkpoints" / "step-10")
    assert (exp.E is None) == (cfg.model.variant == "gan")
    m = evaluate_checkpoint(tmp_path / "checkpoints" / "step-10", ["modes"])
    assert m["num_samples"] == 200
    if exp.E is not None:
        from dali_dist.inference import DaliModel
        assert DaliModel(exp).reconstruct(torch.zeros(3, 2)).shape == (3, 2)


@pytest.mark.timeout(120)
def test_retention_keeps_checkpoints_not_yet_evaluated(tmp_path, tiny_grid_cfg):
    (tmp_path / "eval").mkdir(parents=True)
    (tmp_path / "eval" / "step-10.json").write_text("{}")  # step 10 was evaluated, 20 and 30 not
    cfg = tiny_grid_cfg("train.steps=50", "train.checkpoint_every=10", "train.keep_checkpoints=1", "train.keep_unevaluated=true")
    assert train(cfg, tmp_path) == 0
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [20, 30, 40, 50]


@pytest.mark.timeout(120)
def test_full_disk_during_checkpoint_is_one_clear_error_and_keeps_the_previous(tmp_path, tiny_grid_cfg, monkeypatch):
    import errno

    import dali_dist.checkpoint as ck
    from dali_dist.errors import UserError

    real_save, calls = ck.save_file, {"n": 0}

    def save_file(tensors, path, *a, **kw):
        calls["n"] += 1
        if "step-10" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *a, **kw)

    monkeypatch.setattr(ck, "save_file", save_file)
    with pytest.raises(UserError, match=r"step-10: cannot write checkpoint \(No space left on device\)"):
        train(tiny_grid_cfg("train.steps=20", "train.checkpoint_every=5"), tmp_path)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [5]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    assert load_export(tmp_path / "checkpoints" / "step-5").meta["step"] == 5


@pytest.mark.timeout(180)
def test_sigusr1_mid_run_checkpoints_and_exits_75_then_resumes(tmp_path):
    """What Slurm's --signal=USR1 does to a single-process run (no launcher): the trainer
    finishes its step, checkpoints, exits 75; --resume auto continues from that step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, TINY_GRID

    sets = [a for s in [*TINY_GRID, "train.steps=1000000", "train.checkpoint_every=1000000"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(tmp_path), *sets]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stats = tmp_path / "stats.jsonl"
    deadline = time.time() + 90
    while not (stats.exists() and stats.stat().st_size) and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=60)
    assert p.returncode == EXIT_REQUEUE, err[-2000:]
    assert (tmp_path / "exit_code").read_text() == "75\n"
    (step, ckpt), = complete_checkpoints(tmp_path)
    assert step > 0 and f"checkpointed step {step}" in out
    r = subprocess.run(cmd[:-len(sets)] + [a if a != "train.steps=1000000" else f"train.steps={step + 5}" for a in sets]
                       + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {ckpt} at step {step}" in r.stdout
    assert (tmp_path / "exit_code").read_text() == "0\n"
