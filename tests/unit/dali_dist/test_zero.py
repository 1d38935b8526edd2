"""zero.py directly: the DeepSpeed config, G+E as one module, the PhaseUpdate interface over an
engine (skips, runs of skips, state), partition files that load with weights_only=True and the
refusals of a bad one; with DeepSpeed installed, one process of real ZeRO-1/2 engines checked
against plain torch Adam steps and a partition saved and loaded back (whole training runs:
tests/integration/test_zero.py)."""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dali_dist import zero
from dali_dist.errors import UserError
from dali_dist.precision import PhaseUpdate, plain_backward

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
LR_D, LR_G, LR_E = 0.1, 0.05, 0.02  # distinct, so a parameter in the wrong group shows


# ------------------------------------------------------------------------------------ pure parts

def test_ds_config_is_one_micro_batch_per_rank_and_no_accumulation():
    cfg = zero.ds_config(stage=2, micro_batch=16, world_size=4)
    assert cfg["train_batch_size"] == 64 and cfg["train_micro_batch_size_per_gpu"] == 16
    assert cfg["gradient_accumulation_steps"] == 1
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["zero_allow_untested_optimizer"] is True
    assert zero.ds_config(1, 8, 1)["zero_optimization"]["stage"] == 1


def test_gen_enc_forward_is_G_and_holds_G_then_E():
    torch.manual_seed(0)
    G, E = nn.Linear(4, 3), nn.Linear(3, 2)
    ge = zero.GenEnc(G, E)
    z = torch.randn(5, 4)
    assert torch.equal(ge(z), G(z))
    # the order opt_ge's groups are built in: G's parameters, then E's
    assert [id(p) for p in ge.parameters()] == [id(p) for p in [*G.parameters(), *E.parameters()]]
    assert [id(p) for p in zero.GenEnc(G, None).parameters()] == [id(p) for p in G.parameters()]


class _Stage(enum.Enum):
    TWO = 2


def test_plain_turns_enums_into_values_and_keeps_everything_else_loadable(tmp_path):
    w = torch.ones(3, requires_grad=True)
    sd = {"zero_stage": _Stage.TWO, "groups": [w * 2, (torch.zeros(2), 7)], "ds_version": "0.1", "clip": 0.0,
          "nested": {"state": {0: {"exp_avg": torch.full((2,), 3.0)}}}}
    plain = zero._plain(sd)
    assert plain["zero_stage"] == 2 and plain["ds_version"] == "0.1" and plain["clip"] == 0.0
    assert isinstance(plain["groups"], list) and isinstance(plain["groups"][1], tuple)
    assert not plain["groups"][0].requires_grad and torch.equal(plain["groups"][0], torch.full((3,), 2.0))
    torch.save(plain, tmp_path / "p.pt")
    back = torch.load(tmp_path / "p.pt", weights_only=True)  # what load_partition does
    assert back["zero_stage"] == 2 and torch.equal(back["nested"]["state"][0]["exp_avg"], torch.full((2,), 3.0))
    # the enum itself would be refused by weights_only: that is why _plain exists
    torch.save(sd, tmp_path / "raw.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "raw.pt", weights_only=True)


class _FakeEngine:
    """What ZeroPhase uses of a DeepSpeed engine; ``applied`` says which steps ZeRO applies."""

    def __init__(self, applied):
        self._applied = iter(applied)
        self._last = None
        self.calls = []
        self.device = torch.device("cpu")

    def backward(self, loss):
        self.calls.append(("backward", float(loss)))

    def step(self):
        self._last = next(self._applied)
        self.calls.append(("step",))

    def was_step_applied(self):
        return self._last


# finite (True) or non-finite (False) losses, and "read" where the trainer reads the longest run
PATTERN = [True, False, False, "read", False, True, "read", "read", False, "read", False, "read", True, True, "read"]


def test_zero_phase_counts_skips_and_runs_exactly_as_phase_update_does():
    """ZeroPhase stands in for PhaseUpdate: the same losses give the same flags, totals and
    longest runs (the reference is PhaseUpdate's own bookkeeping on a real optimizer)."""
    torch.manual_seed(0)
    m = nn.Linear(3, 1)
    ref = PhaseUpdate("d", torch.optim.Adam(m.parameters(), lr=0.1), backward=plain_backward)
    steps = [p for p in PATTERN if p != "read"]
    ours = zero.ZeroPhase("d", _FakeEngine(steps))
    flags_ref, flags_ours, runs_ref, runs_ours = [], [], [], []
    for p in PATTERN:
        if p == "read":
            runs_ref.append(ref.pop_longest_run())
            runs_ours.append(ours.pop_longest_run())
            continue
        loss = m(torch.ones(2, 3)).pow(2).mean() * (1.0 if p else float("inf"))
        flags_ref.append(float(ref.update(loss)))
        flags_ours.append(float(ours.update(loss.detach())))
    assert flags_ours == flags_ref == [0.0 if p else 1.0 for p in steps]
    assert ours.skipped == ref.skipped == 5
    assert runs_ours == runs_ref == [2, 3, 0, 1, 2, 2]  # a run open at a read goes on
    # update = backward then step, once each per loss, with the whole loss
    assert [c[0] for c in ours.engine.calls] == ["backward", "step"] * len(steps)


def test_zero_phase_state_round_trips_through_json_and_takes_whole_losses_only():
    ph = zero.ZeroPhase("ge", _FakeEngine([False, False, True]))
    for _ in range(3):
        ph.update(torch.tensor(1.0))
    state = json.loads(json.dumps(ph.state_dict()))
    assert state == {"scale": 1.0, "good_steps": 0, "skipped": 2}
    fresh = zero.ZeroPhase("ge", _FakeEngine([]))
    fresh.load_state_dict(state)
    assert fresh.skipped == 2 and fresh.scale == 1.0
    fresh.load_state_dict({})  # an older train state without the key
    assert fresh.skipped == 0
    with pytest.raises(UserError, match="train.update_order=alternating"):
        ph.backward(torch.tensor(1.0), inputs=[torch.zeros(1)])
    ph.zero_grad()  # the engine clears its own gradients: nothing to do, nothing called
    assert ph.engine.calls[-1] == ("step",)


def test_missing_deepspeed_is_one_user_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "deepspeed", None)  # import deepspeed -> ImportError
    with pytest.raises(UserError, match=r"train.strategy needs DeepSpeed .*pip install 'dali-dist\[deepspeed\]'"):
        zero.require_deepspeed()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("content, why", [
    (None, "FileNotFoundError"),
    (b"not a torch file", "UnpicklingError"),
    ("pickle", "UnpicklingError"),
])
def test_an_unreadable_partition_is_one_user_error(tmp_path, content, why):
    folder = tmp_path / zero.ZERO_DIR
    folder.mkdir()
    f = folder / "optim_d-rank0.pt"
    if content == "pickle":
        torch.save({"x": _RunsCode()}, f)  # would run code if unpickled in full
    elif content is not None:
        f.write_bytes(content)
    with pytest.raises(UserError, match=rf"optim_d-rank0.pt: unreadable ZeRO optimizer partition \({why}\)"):
        zero.load_partition(tmp_path, "d", engine=None, rank=0, world_size=1)


def test_a_partition_of_another_world_size_is_refused_before_it_is_used(tmp_path):
    (tmp_path / zero.ZERO_DIR).mkdir()
    torch.save({"partition_count": [2, 2]}, tmp_path / zero.ZERO_DIR / "optim_ge-rank0.pt")
    with pytest.raises(UserError, match="written by 2 ranks, this run has 1; resume ZeRO checkpoints on the same"):
        zero.load_partition(tmp_path, "ge", engine=None, rank=0, world_size=1)  # engine never touched


# ------------------------------------------------------------ real engines, one process (DeepSpeed)

def _nets(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(3, 2)  # G, D, E


def _d_loss(d_forward, x):
    return d_forward(x).pow(2).mean()


def _ge_loss(g_forward, E, z):
    g = g_forward(z)
    return g.pow(2).mean() + E(g).sum() * 0.1


def _data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, generator=gen), torch.randn(4, 4, generator=gen)) for _ in range(3)]


def _state(*modules):
    return [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in modules]


def _engines_child(_rank, stage, out):
    """In a fresh process (DeepSpeed's process group and module state stay out of pytest's):
    three steps of each phase, a skipped step, a partition saved and loaded into new engines."""
    res = {}
    G, D, E = _nets()
    res["init"] = _state(G, D, E)

    def engines(G, D, E):
        opt_d = torch.optim.Adam(D.parameters(), lr=LR_D)
        opt_ge = torch.optim.Adam([{"params": G.parameters(), "lr": LR_G}, {"params": E.parameters(), "lr": LR_E}])
        ed, ege, _ = zero.build_engines(stage, G, D, E, opt_d, opt_ge, 4, 1, torch.device("cpu"))
        return zero.ZeroPhase("d", ed), zero.ZeroPhase("ge", ege)

    pd, pge = engines(G, D, E)
    res["clip"] = (float(pd.engine.gradient_clipping()), float(pge.engine.gradient_clipping()))
    res["flags"] = []
    for x, z in _data():
        res["flags"].append(float(pd.update(_d_loss(pd.engine, x))))
        res["flags"].append(float(pge.update(_ge_loss(pge.engine, E, z))))
    res["after"] = _state(G, D, E)
    x, z = _data()[0]
    res["inf_flag"] = float(pd.update(_d_loss(pd.engine, x) * float("inf")))
    res["after_inf"] = _state(D)[0]
    res["skipped"] = (pd.skipped, pge.skipped)

    ckpt = Path(out) / "ckpt"
    for ph in (pd, pge):
        zero.save_partition(ckpt / zero.ZERO_DIR, ph.name, ph.engine, rank=0)
    res["files"] = sorted(p.name for p in (ckpt / zero.ZERO_DIR).iterdir())
    res["keys"] = sorted(torch.load(ckpt / zero.ZERO_DIR / "optim_d-rank0.pt", weights_only=True))

    # the same weights in new engines: with the partition loaded, and without
    def copies():
        G2, D2, E2 = _nets(seed=99)
        for dst, src in zip((G2, D2, E2), (G, D, E)):
            dst.load_state_dict(src.state_dict())
        return G2, D2, E2

    G2, D2, E2 = copies()
    pd2, pge2 = engines(G2, D2, E2)
    zero.load_partition(ckpt, "d", pd2.engine, rank=0, world_size=1)
    zero.load_partition(ckpt, "ge", pge2.engine, rank=0, world_size=1)
    G3, D3, E3 = copies()
    pd3, pge3 = engines(G3, D3, E3)
    x, z = _data()[1]
    for (p_d, p_ge, e) in ((pd, pge, E), (pd2, pge2, E2), (pd3, pge3, E3)):
        p_d.update(_d_loss(p_d.engine, x))
        p_ge.update(_ge_loss(p_ge.engine, e, z))
    res["next"] = [_state(G, D, E), _state(G2, D2, E2), _state(G3, D3, E3)]
    try:
        zero.load_partition(ckpt, "d", pd2.engine, rank=0, world_size=2)
    except UserError as exc:
        res["other_world"] = str(exc)
    torch.save(res, Path(out) / "result.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module", params=[2], ids=["zero2"])  # ZeRO-1 as well: 6 s more; the integration tests run both
def engine_run(request, tmp_path_factory):
    if not HAS_DEEPSPEED:
        pytest.skip("DeepSpeed is not installed (pip install 'dali-dist[deepspeed]')")
    out = tmp_path_factory.mktemp(f"zero{request.param}")
    with pytest.MonkeyPatch.context() as mp_env:  # the child's environment; pytest's own is left as it was
        mp_env.setenv("DS_ACCELERATOR", "cpu")
        for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
            mp_env.delenv(k, raising=False)  # ensure_process_group sets them for one process
        mp.spawn(_engines_child, args=(request.param, str(out)), nprocs=1)
    return torch.load(out / "result.pt", weights_only=True)


def _assert_states_close(a, b):
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def _adam_reference(init, clip: tuple[float, float]):
    """Plain torch Adam on the same initial weights and losses, per-network rates; each phase's
    gradients clipped to a global norm of ``clip`` (0: not clipped), as DeepSpeed clips."""
    G, D, E = _nets()
    for m, sd in zip((G, D, E), init):
        m.load_state_dict(sd)
    opt_d = torch.optim.Adam(D.parameters(), lr=LR_D)
    opt_ge = torch.optim.Adam([{"params": G.parameters(), "lr": LR_G}, {"params": E.parameters(), "lr": LR_E}])
    for x, z in _data():
        for opt, loss, c in ((opt_d, lambda: _d_loss(D, x), clip[0]), (opt_ge, lambda: _ge_loss(G, E, z), clip[1])):
            opt.zero_grad()
            loss().backward()
            if c > 0:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], c)
            opt.step()
    return _state(G, D, E)


@pytest.mark.timeout(120)
def test_engine_steps_equal_torch_adam_steps(engine_run):
    """Both engines step as torch Adam would (the right parameters, groups and rates), with
    the gradient clipping the engines report."""
    assert engine_run["flags"] == [0.0] * 6
    _assert_states_close(engine_run["after"], _adam_reference(engine_run["init"], engine_run["clip"]))
    assert not torch.equal(engine_run["after"][1]["weight"], engine_run["init"][1]["weight"])  # they moved


@pytest.mark.timeout(120)
def test_engines_clip_nothing_as_the_ddp_path(engine_run):
    """DeepSpeed clips at norm 1.0 unless told otherwise; the DDP path and Algorithm 1 clip nothing."""
    assert engine_run["clip"] == (0.0, 0.0)
    _assert_states_close(engine_run["after"], _adam_reference(engine_run["init"], (0.0, 0.0)))


@pytest.mark.timeout(120)
def test_a_non_finite_loss_is_skipped_and_counted(engine_run):
    assert engine_run["inf_flag"] == 1.0 and engine_run["skipped"] == (1, 0)
    for k, v in engine_run["after_inf"].items():
        assert torch.equal(v, engine_run["after"][1][k]), k  # D exactly as before the skipped step


@pytest.mark.timeout(120)
def test_a_saved_partition_loads_with_weights_only_and_resumes_the_optimizer(engine_run):
    assert engine_run["files"] == ["optim_d-rank0.pt", "optim_ge-rank0.pt"]  # no temporaries left
    assert "loss_scaler" not in engine_run["keys"] and "param_slice_mappings" not in engine_run["keys"]
    assert {"base_optimizer_state", "single_partition_of_fp32_groups", "partition_count"} <= set(engine_run["keys"])
    uninterrupted, resumed, fresh = engine_run["next"]
    _assert_states_close(resumed, uninterrupted)
    # without the partition, Adam starts over and the next step differs: the load is what matters
    assert not torch.allclose(fresh[1]["weight"], uninterrupted[1]["weight"], rtol=1e-5, atol=1e-6)
    assert "written by 1 ranks, this run has 2" in engine_run["other_world"]
