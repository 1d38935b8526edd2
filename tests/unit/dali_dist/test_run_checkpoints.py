"""run_checkpoints.py: what a run's checkpoint holds and the one place that saves, loads and
prunes them, with a stand-in accelerator and strategy: weights, optimizer states and the
export come back exactly; the train state records the world size and each phase; replicas that
differ stop the save before anything is written; retention keeps what ``protect`` names;
a rank other than the main one writes nothing and still waits."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from dali_dist.checkpoint import TrainState, complete_checkpoints, load_export
from dali_dist.config import load_config
from dali_dist.models import build_models
from dali_dist.run_checkpoints import RunCheckpoints
from dali_dist.strategy import Strategy

from tests.conftest import TINY_GRID


class _Accelerator(SimpleNamespace):
    def wait_for_everyone(self):
        self.waits += 1


class _Strategy(Strategy):
    """A stand-in: the optimizers it was given, replicas that agree unless told otherwise, and
    per-rank state staged in a folder when ``stage`` is set."""

    def __init__(self, accelerator, cfg, opts, diverged=(), stage=False):
        super().__init__(accelerator, cfg)
        self.opts, self.diverged, self.stage = opts, list(diverged), stage
        self.staged_steps = []

    def build_optimizers(self, G, D, E, ge_groups):
        raise AssertionError("not used by RunCheckpoints")

    def wrap(self, G, D, E):
        raise AssertionError("not used by RunCheckpoints")

    def checkpoint_optimizers(self):
        return self.opts

    def replicas_diverged(self):
        return self.diverged

    def stage_partitions(self, run_dir, step):
        self.staged_steps.append(step)
        if not self.stage:
            return {}
        folder = Path(run_dir) / "checkpoints" / f".staged-{step}"
        folder.mkdir(parents=True)
        (folder / "rank0.bin").write_bytes(b"partition %d" % step)
        return {"zero": folder}


class _Phase:
    def __init__(self, name, skipped):
        self.name, self.skipped = name, skipped

    def state_dict(self):
        return {"scale": 1.0, "good_steps": 0, "skipped": self.skipped}


def _setup(run_dir, *sets, seed=0, main=True, world=1, diverged=(), stage=False, protect=None):
    cfg = load_config("grid2d", [*TINY_GRID, *sets])
    torch.manual_seed(seed)
    G, D, E = build_models(cfg)
    opts = {"d": torch.optim.Adam(D.parameters(), lr=0.1),
            "ge": torch.optim.Adam([{"params": G.parameters()}, {"params": E.parameters()}], lr=0.1)}
    acc = _Accelerator(num_processes=world, is_main_process=main, waits=0)
    strategy = _Strategy(acc, cfg, opts, diverged, stage)
    models = {"G": G, "D": D, "E": E}
    rc = RunCheckpoints(run_dir, cfg, acc, strategy, models, export=lambda: dict(models), protect=protect)
    return rc, models, opts


def _train_a_step(models, opts, latent_dim):
    x = torch.randn(8, 2)
    for opt, loss in ((opts["d"], lambda: models["D"](x)[0].pow(2).mean()),
                      (opts["ge"], lambda: models["D"](models["G"](torch.randn(8, latent_dim)))[0].mean()
                       + models["E"](models["D"](x)[1])[0].pow(2).mean())):
        opt.zero_grad()
        loss().backward()
        opt.step()


def _weights(models):
    return {f"{n}.{k}": v.detach().clone() for n, m in models.items() for k, v in m.state_dict().items()}


def test_save_then_load_gives_back_weights_optimizer_states_and_train_state(tmp_path):
    rc, models, opts = _setup(tmp_path, seed=0, world=3, stage=True)
    _train_a_step(models, opts, rc.cfg.model.latent_dim)
    state = TrainState(step=12, batches_consumed=40, elapsed_s=3.5)
    rc.save(state, [_Phase("d", 2), _Phase("ge", 0)])

    ckpt = tmp_path / "checkpoints" / "step-12"
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [12]
    saved = json.loads((ckpt / "train_state.json").read_text())
    assert saved["world_size"] == 3 and saved["batches_consumed"] == 40
    assert saved["phases"] == {"d": {"scale": 1.0, "good_steps": 0, "skipped": 2},
                               "ge": {"scale": 1.0, "good_steps": 0, "skipped": 0}}
    assert (ckpt / "zero" / "rank0.bin").read_bytes() == b"partition 12"  # staged state moved in
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no staging or temporary folder left
    assert rc.accelerator.waits == 1 and rc.strategy.staged_steps == [12]
    exp = load_export(ckpt)
    assert exp.meta["step"] == 12 and exp.E is not None
    for k, v in load_file(ckpt / "export" / "G.safetensors").items():
        assert torch.equal(v, models["G"].state_dict()[k])

    fresh, fresh_models, fresh_opts = _setup(tmp_path, seed=1)
    assert not torch.equal(next(fresh_models["D"].parameters()), next(models["D"].parameters()))  # really fresh
    loaded = fresh.load(ckpt)
    assert loaded.step == 12 and loaded.world_size == 3 and loaded.phases["d"]["skipped"] == 2
    a, b = _weights(models), _weights(fresh_models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("d", "ge"):
        sa, sb = opts[name].state_dict()["state"], fresh_opts[name].state_dict()["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for i in sa:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(sa[i][key], sb[i][key]), (name, i, key)


def test_replicas_that_differ_stop_the_save_before_anything_is_written(tmp_path):
    rc, models, _ = _setup(tmp_path, diverged=["D", "E"])
    with pytest.raises(RuntimeError, match=r"^step 4: weights of D, E differ between ranks$"):
        rc.save(TrainState(step=4), [])
    assert not (tmp_path / "checkpoints").exists()
    assert rc.strategy.staged_steps == [] and rc.accelerator.waits == 0


def test_a_rank_other_than_the_main_one_stages_but_writes_nothing_and_waits(tmp_path):
    rc, _, _ = _setup(tmp_path, main=False, world=2)
    rc.save(TrainState(step=5), [])
    assert rc.strategy.staged_steps == [5] and rc.accelerator.waits == 1
    assert complete_checkpoints(tmp_path) == []


def test_retention_keeps_the_newest_every_kth_and_what_protect_names(tmp_path):
    asked = []

    def protect(run_dir):
        asked.append(run_dir)
        return frozenset({2})

    rc, _, _ = _setup(tmp_path, "train.keep_checkpoints=2", "train.keep_every=3", protect=protect)
    for step in range(1, 8):
        rc.save(TrainState(step=step), [])
    # newest two (6, 7), multiples of 3 (3, 6), and step 2 because protect said so
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2, 3, 6, 7]
    assert asked == [tmp_path] * 7

    rc2, _, _ = _setup(tmp_path / "b", "train.keep_checkpoints=2", "train.keep_every=0")
    for step in range(1, 5):
        rc2.save(TrainState(step=step), [])
    assert [s for s, _ in complete_checkpoints(tmp_path / "b")] == [3, 4]
