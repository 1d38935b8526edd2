"""run_setup.py: what a resumed run may change (and that a refusal writes nothing), the saved
config (atomic, read back equal), the run name, the world-size and sync-BN checks, and the
closing lines."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dali_dist.checkpoint import TrainState
from dali_dist.config import config_from_dict, dump_yaml, load_config, read_saved_config
from dali_dist.errors import UserError
from dali_dist.run_setup import (RESUME_MAY_CHANGE, check_run_config, next_steps, run_name, use_sync_batchnorm,
                                 warn_if_world_size_changed, write_run_config)
from dali_dist.tracking import NullTracker

from tests.conftest import TINY_GRID


def _cfg(*extra):
    return load_config("grid2d", [*TINY_GRID, *extra])


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------ resume checks


def test_every_field_a_resume_may_change_exists():
    cfg = load_config("mnist", ["tracking.enabled=false"], data="shards")

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]

    assert RESUME_MAY_CHANGE <= set(flat(cfg.to_dict()))


def test_resume_accepts_the_operational_fields_and_says_what_changed(tmp_path, capsys):
    write_run_config(tmp_path, _cfg())
    before = _snapshot(tmp_path)
    changed = _cfg("train.steps=999", "train.log_every=7", "tracking.enabled=true", "name=longer")
    check_run_config(tmp_path, changed, resuming=True)
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == ["resume: name changed from 'grid2d' to 'longer'",
                           "resume: tracking.enabled changed from False to True",
                           "resume: train.log_every changed from 5 to 7",
                           f"resume: train.steps changed from {_cfg().train.steps!r} to 999"]
    assert _snapshot(tmp_path) == before  # reads only


@pytest.mark.parametrize("sets, fields", [
    (["model.latent_dim=4"], "model.latent_dim"),
    (["optim.lr_d=0.5", "train.seed=3"], "optim.lr_d, train.seed"),
    (["train.batch_size=32", "train.steps=5"], "train.batch_size"),
    (["data.num_workers=3"], "data.num_workers"),  # the data order depends on it
])
def test_resume_refuses_other_changes_and_writes_nothing(tmp_path, capsys, sets, fields):
    write_run_config(tmp_path, _cfg())
    before = _snapshot(tmp_path)
    with pytest.raises(UserError) as info:
        check_run_config(tmp_path, _cfg(*sets), resuming=True)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'config.yaml'}: cannot resume with a changed {fields} (only ")
    assert msg.endswith(f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
    assert _snapshot(tmp_path) == before
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("preset", ["grid2d", "mnist", "cifar10", "celeba"])
def test_an_unchanged_config_resumes_silently(tmp_path, capsys, preset):
    # what write_run_config saved reads back equal, small floats and nulls included
    cfg = load_config(preset, ["tracking.enabled=false", "optim.lr_d=1e-5", "model.lambda_e=0.001"], data="shards")
    write_run_config(tmp_path, cfg)
    check_run_config(tmp_path, cfg, resuming=True)
    assert capsys.readouterr().out == ""


def test_no_check_for_a_fresh_run_or_without_a_saved_config(tmp_path):
    write_run_config(tmp_path / "a", _cfg())
    check_run_config(tmp_path / "a", _cfg("model.latent_dim=4"), resuming=False)
    check_run_config(tmp_path / "b", _cfg("model.latent_dim=4"), resuming=True)
    assert not (tmp_path / "b").exists()


def test_a_damaged_saved_config_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(UserError, match=f"^{tmp_path / 'config.yaml'}: "):
        check_run_config(tmp_path, _cfg(), resuming=True)


# ------------------------------------------------------------------------------------------ the saved config


def test_write_run_config_saves_the_resolved_config(tmp_path):
    cfg = _cfg("train.steps=123")
    run_dir = tmp_path / "deep" / "run"
    write_run_config(run_dir, cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "images"]
    assert (run_dir / "images").is_dir()
    assert (run_dir / "config.yaml").read_text() == dump_yaml(cfg)
    assert config_from_dict(read_saved_config(run_dir / "config.yaml")) == cfg
    write_run_config(run_dir, _cfg("train.steps=456"))  # again: replaced, images/ kept
    assert config_from_dict(read_saved_config(run_dir / "config.yaml")).train.steps == 456
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "images"]


def test_write_run_config_is_atomic(tmp_path, monkeypatch):
    write_run_config(tmp_path, _cfg("train.steps=123"))
    old = (tmp_path / "config.yaml").read_bytes()

    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)  # the write fails after the bytes went to the temporary
    with pytest.raises(OSError):
        write_run_config(tmp_path, _cfg("train.steps=456"))
    assert (tmp_path / "config.yaml").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "images"]  # no temporary left


# ------------------------------------------------------------------------------------------ run name


def test_run_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    short = hashlib.sha1(str(tmp_path / "r").encode()).hexdigest()[:6]
    assert run_name(_cfg(), Path("r")) == f"grid2d-dali-{short}"
    assert run_name(_cfg(), tmp_path / "r") == run_name(_cfg(), Path("r"))  # the same folder, the same name
    assert run_name(_cfg(), tmp_path / "s") != run_name(_cfg(), tmp_path / "r")
    assert run_name(_cfg("model.variant=gan"), Path("r")) == f"grid2d-gan-{short}"
    assert run_name(_cfg("name=dali"), Path("r")) == f"dali-{short}"  # the variant is not repeated


# ------------------------------------------------------------------------------------------ world size, sync BN


class _Acc(SimpleNamespace):
    def print(self, *a):
        self.printed.append(" ".join(map(str, a)))


def test_world_size_change(tmp_path):
    acc = _Acc(printed=[])
    for written in (0, 4):  # unknown, or the same
        warn_if_world_size_changed(acc, _cfg(), TrainState(world_size=written), 4, 16)
    assert acc.printed == []
    warn_if_world_size_changed(acc, _cfg(), TrainState(world_size=2), 4, 16)
    assert len(acc.printed) == 1
    assert acc.printed[0].startswith("WARNING: resuming a checkpoint written by 2 processes on 4: the global batch "
                                     "stays 64 (16 per process now)")
    zero = SimpleNamespace(train=SimpleNamespace(strategy="zero1", batch_size=64))
    with pytest.raises(UserError, match="^checkpoint written by 2 processes under train.strategy=zero1 cannot "
                                        "resume on 4"):
        warn_if_world_size_changed(acc, zero, TrainState(world_size=2), 4, 16)


def test_sync_batchnorm(capsys):
    G = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    one = _Acc(printed=[], num_processes=1, device=torch.device("cpu"))
    use_sync_batchnorm(one, G, None)
    assert "one process" in one.printed[0] and isinstance(G[1], torch.nn.BatchNorm1d)
    two = _Acc(printed=[], num_processes=2, device=torch.device("cpu"))
    with pytest.raises(UserError, match="train.sync_bn needs CUDA GPUs"):
        use_sync_batchnorm(two, G)


# ------------------------------------------------------------------------------------------ closing lines


def test_next_steps(tmp_path):
    rd = tmp_path / "run"
    stopped = next_steps(_cfg(), rd, 3)
    assert stopped == f"stopped: {rd} (checkpoint written); continue with: dali-dist train ... --run-dir {rd} --resume auto"
    done = next_steps(_cfg(), rd, 0).splitlines()
    assert done[0] == f"done: {rd}"
    assert f"  dali-dist evaluate --run-dir {rd} --metrics modes --out {rd}/metrics.json" in done
    assert f"  dali-dist sample --run-dir {rd} --num 64 --out {rd}/samples/" in done
    assert not any("mlflow" in line for line in done)
    grey = load_config("mnist", ["tracking.enabled=false"], data="shards")
    assert "--metrics is,mse " in next_steps(grey, rd, 0)
    assert "--metrics is " in next_steps(load_config("mnist", ["tracking.enabled=false", "model.variant=gan"],
                                                     data="shards"), rd, 0)
    colour = load_config("cifar10", ["tracking.enabled=false"], data="shards")
    assert "--metrics fid,is,mse " in next_steps(colour, rd, 0)
    tracked = next_steps(_cfg("tracking.enabled=true", "tracking.uri=http://user:secret@host:5000"), rd, 0)
    assert "mlflow ui --backend-store-uri http://***@host:5000" in tracked and "secret" not in tracked


def test_tracking_off_gives_the_null_tracker(tmp_path):
    from dali_dist.run_setup import start_run_tracking

    assert isinstance(start_run_tracking(_cfg(), tmp_path, 1, 64), NullTracker)
    assert not any(tmp_path.iterdir())
