"""checkpoint.py on its own: save then load gives back every tensor and the train state; the
export holds what evaluation reads; damaged or absent files are one-line UserErrors naming
the file; only complete ``step-<N>`` folders count; retention deletes the right steps."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from dali_dist.checkpoint import (TrainState, complete_checkpoints, export_dir, load_checkpoint, load_export,
                                  load_train_state, newest_checkpoint, prune_checkpoints, resolve_resume,
                                  save_checkpoint)
from dali_dist.config import load_config
from dali_dist.errors import UserError
from dali_dist.models import build_models

from tests.conftest import TINY_GRID


def _cfg(*extra):
    return load_config("grid2d", [*TINY_GRID, *extra])


def _trained(cfg, seed):
    """Models and Adam optimizers after one step, so the optimizer state holds tensors."""
    torch.manual_seed(seed)
    G, D, E = build_models(cfg)
    opts = {"d": torch.optim.Adam(D.parameters(), lr=0.01),
            "ge": torch.optim.Adam([*G.parameters(), *E.parameters()], lr=0.01)}
    z = torch.randn(16, cfg.model.latent_dim)
    logit, feats = D(G(z))
    loss = logit.mean() + E(feats)[0].pow(2).mean()
    loss.backward()
    for o in opts.values():
        o.step()
    return {"G": G, "D": D, "E": E}, opts


def _save(run_dir, cfg, models, opts, step=7, **state):
    return save_checkpoint(run_dir, cfg, TrainState(step=step, **state), models, opts, dict(models))


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _fake_step(run_dir, step, complete=True):
    p = run_dir / "checkpoints" / f"step-{step}"
    p.mkdir(parents=True)
    if complete:
        (p / "train_state.json").write_text(TrainState(step=step).to_json())
    return p


# ------------------------------------------------------------------------------------------ round trip


def test_save_then_load_gives_back_weights_optimizer_state_and_train_state(tmp_path):
    cfg = _cfg()
    models, opts = _trained(cfg, seed=0)
    phases = {"d": {"scale": 1024.0, "good_steps": 3, "skipped": 1}}
    path = _save(tmp_path, cfg, models, opts, step=7, batches_consumed=21, elapsed_s=1.5, world_size=2, phases=phases)
    assert path == tmp_path / "checkpoints" / "step-7"
    names = {p.name for p in path.iterdir()}
    assert names == {"G.safetensors", "D.safetensors", "E.safetensors", "optim_d.pt", "optim_ge.pt",
                     "export", "train_state.json"}
    assert json.loads((path / "train_state.json").read_text())["step"] == 7

    fresh, fresh_opts = _trained(cfg, seed=1)  # different weights and moments to overwrite
    assert not torch.equal(fresh["G"].state_dict()["net.0.0.weight"], models["G"].state_dict()["net.0.0.weight"])
    state = load_checkpoint(path, fresh, fresh_opts)
    assert state == TrainState(step=7, batches_consumed=21, elapsed_s=1.5, world_size=2, phases=phases)
    for name in models:
        _assert_same_tensors(fresh[name].state_dict(), models[name].state_dict())
    for name in opts:
        want, got = opts[name].state_dict(), fresh_opts[name].state_dict()
        assert want["param_groups"] == got["param_groups"]
        for i in want["state"]:
            _assert_same_tensors(got["state"][i], want["state"][i])


def test_export_holds_the_models_config_and_meta(tmp_path):
    cfg = _cfg()
    models, opts = _trained(cfg, seed=0)
    path = _save(tmp_path, cfg, models, opts, step=7)
    assert export_dir(path) == path / "export" and export_dir(path / "export") == path / "export"
    for where in (path, path / "export"):
        exp = load_export(where)
        assert exp.path == path / "export"
        assert exp.meta["step"] == 7 and exp.meta["sample_shape"] == [2] and exp.meta["has_encoder"] is True
        assert exp.meta["variant"] == cfg.model.variant and exp.meta["dataset"] == "grid2d"
        assert exp.cfg.to_dict() == cfg.to_dict()
        for name in ("G", "D", "E"):
            net = getattr(exp, name)
            _assert_same_tensors(net.state_dict(), models[name].state_dict())
            assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_export_dir_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path}: not a checkpoint"):
        export_dir(tmp_path)


def test_saving_a_step_again_replaces_it_and_a_stale_temporary(tmp_path):
    cfg = _cfg()
    models, opts = _trained(cfg, seed=0)
    stale = tmp_path / "checkpoints" / ".tmp-step-7"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a killed save")
    _save(tmp_path, cfg, models, opts, step=7, batches_consumed=1)
    _save(tmp_path, cfg, models, opts, step=7, batches_consumed=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-7"]
    assert load_train_state(tmp_path / "checkpoints" / "step-7").batches_consumed == 2


def test_a_failed_save_is_one_line_and_leaves_earlier_checkpoints(tmp_path, monkeypatch):
    cfg = _cfg()
    models, opts = _trained(cfg, seed=0)
    _save(tmp_path, cfg, models, opts, step=5)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError) as info:
        _save(tmp_path, cfg, models, opts, step=10)
    assert str(info.value) == (f"{tmp_path / 'checkpoints' / 'step-10'}: cannot write checkpoint "
                               "(No space left on device); earlier checkpoints are intact")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-5"]


# ------------------------------------------------------------------------------------------ damaged files


@pytest.fixture
def saved(tmp_path):
    cfg = _cfg()
    models, opts = _trained(cfg, seed=0)
    return cfg, _save(tmp_path / "run", cfg, models, opts)


def _load_into_fresh(cfg, path):
    models, opts = _trained(cfg, seed=1)
    return load_checkpoint(path, models, opts)


@pytest.mark.parametrize("name", ["G.safetensors", "E.safetensors", "optim_ge.pt"])
def test_an_absent_file_is_named(saved, name):
    cfg, path = saved
    (path / name).unlink()
    with pytest.raises(UserError, match=f"^{path / name}: missing$"):
        _load_into_fresh(cfg, path)


@pytest.mark.parametrize("name, why", [("D.safetensors", "unreadable weights, truncated or not safetensors"),
                                       ("optim_d.pt", r"unreadable optimizer state, truncated\?")])
def test_a_truncated_file_is_named(saved, name, why):
    cfg, path = saved
    f = path / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UserError, match=f"^{f}: {why}") as info:
        _load_into_fresh(cfg, path)
    assert "\n" not in str(info.value)


def test_weights_of_another_config_are_refused_naming_the_tensor(saved):
    cfg, path = saved
    other = _cfg("model.g_hidden=[48, 32]")
    with pytest.raises(UserError, match=rf"^{path / 'G.safetensors'}: weights do not fit this model "
                                        r"\(net\.0\.0\.weight is \(32, \d+\), this model's is \(48, \d+\)\)"):
        _load_into_fresh(other, path)


def test_optimizer_state_of_another_shape_is_refused(saved, tmp_path):
    cfg, path = saved
    # the same number of parameters, one of them another shape: load_state_dict alone accepts it
    sd = torch.load(path / "optim_d.pt", weights_only=True)
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"][:1]
    torch.save(sd, path / "optim_d.pt")
    with pytest.raises(UserError, match=f"^{path / 'optim_d.pt'}: optimizer state does not fit this model "
                                        r"\(parameter 0: exp_avg is"):
        _load_into_fresh(cfg, path)


def test_a_pickle_that_builds_objects_is_refused_unrun(saved, tmp_path):
    cfg, path = saved
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state": {}, "param_groups": [], "x": Payload()}, path / "optim_d.pt")
    with pytest.raises(UserError, match=f"^{path / 'optim_d.pt'}: refused, it holds more than tensors"):
        _load_into_fresh(cfg, path)
    assert not marker.exists()


@pytest.mark.parametrize("text, what", [
    ("[1, 2]", "not a JSON object"),
    ('{"step": -1}', "step is -1, expected a number >= 0"),
    ('{"step": true}', "step is True"),
    ('{"elapsed_s": "1"}', "elapsed_s is '1'"),
    ('{"stepz": 1}', "unexpected keyword"),
    ("{", "Expecting"),
    ('{"phases": {"d": {"scale": 0}}}', "phases.d.scale is 0"),
    ('{"phases": {"d": 3}}', "phases.d is 3, expected a mapping"),
    ('{"phases": []}', "phases is [], expected a mapping"),
])
def test_an_invalid_train_state_is_named(tmp_path, text, what):
    (tmp_path / "train_state.json").write_text(text)
    with pytest.raises(UserError) as info:
        load_train_state(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'train_state.json'}: invalid train state (")
    assert what in str(info.value)


def test_an_absent_train_state_is_named(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / 'train_state.json'}: invalid train state"):
        load_train_state(tmp_path)


def test_an_export_whose_meta_disagrees_with_its_config_is_refused(saved):
    _, path = saved
    meta = path / "export" / "meta.json"
    m = json.loads(meta.read_text())
    json.dump({**m, "sample_shape": [3, 32, 32]}, meta.open("w"))
    with pytest.raises(UserError, match=rf"^{meta}: sample_shape \[3, 32, 32\] does not match config.yaml \(\[2\]\)"):
        load_export(path)
    json.dump({**m, "step": "7"}, meta.open("w"))
    with pytest.raises(UserError, match=f"^{meta}: step is '7', expected an integer >= 0"):
        load_export(path)


# ------------------------------------------------------------------------------------------ finding and pruning


def test_only_complete_step_folders_count_in_numeric_order(tmp_path):
    assert complete_checkpoints(tmp_path) == []
    for s in (9, 10, 2):
        _fake_step(tmp_path, s)
    _fake_step(tmp_path, 11, complete=False)                      # no train_state.json yet
    tmp = tmp_path / "checkpoints" / ".tmp-step-12"                 # a save in progress
    tmp.mkdir()
    (tmp / "train_state.json").write_text("{}")
    for name in ("step-x", "step-3.bak", "stepp-4", "step-"):
        (tmp_path / "checkpoints" / name).mkdir()
        (tmp_path / "checkpoints" / name / "train_state.json").write_text("{}")
    got = complete_checkpoints(tmp_path)
    assert got == [(s, tmp_path / "checkpoints" / f"step-{s}") for s in (2, 9, 10)]
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-10"


def test_no_complete_checkpoint_is_named(tmp_path):
    _fake_step(tmp_path, 3, complete=False)
    with pytest.raises(UserError, match=f"^{tmp_path}: no complete checkpoint under checkpoints/$"):
        newest_checkpoint(tmp_path)


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "auto") is None
    _fake_step(tmp_path, 4)
    newest = _fake_step(tmp_path, 40)
    assert resolve_resume(tmp_path, "auto") == newest
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-4")) == tmp_path / "checkpoints" / "step-4"
    partial = _fake_step(tmp_path, 41, complete=False)
    with pytest.raises(UserError, match=f"^{partial}: not a complete checkpoint"):
        resolve_resume(tmp_path, str(partial))


@pytest.mark.parametrize("keep, keep_every, protect, kept", [
    (3, 0, frozenset(), [8, 9, 10]),
    (3, 4, frozenset(), [4, 8, 9, 10]),
    (2, 3, frozenset({1, 5}), [1, 3, 5, 6, 9, 10]),
    (1, 0, frozenset({10}), [10]),
    (20, 0, frozenset(), list(range(1, 11))),
])
def test_prune_keeps_the_newest_the_multiples_and_the_protected(tmp_path, keep, keep_every, protect, kept):
    for s in range(1, 11):
        _fake_step(tmp_path, s)
    stale = tmp_path / "checkpoints" / ".tmp-step-11"
    stale.mkdir()
    removed = prune_checkpoints(tmp_path, keep, keep_every, protect)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == kept
    assert sorted(removed) == sorted(tmp_path / "checkpoints" / f"step-{s}" for s in range(1, 11) if s not in kept)
    assert stale.is_dir()  # not a checkpoint: never pruned


def test_prune_without_checkpoints_removes_nothing(tmp_path):
    assert prune_checkpoints(tmp_path, 2, 0) == []
