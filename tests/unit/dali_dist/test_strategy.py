"""strategy.py: the strategy named in the config; an abstract base that refuses half a
strategy; DDPStrategy in one CPU process (optimizers over the right parameters at the right
rates, wrapped networks that unwrap to the plain modules, a D phase equal to a torch Adam step,
nothing staged per rank); ZeroStrategy's optimizers and, with DeepSpeed installed, its engines,
unwrapping and per-rank partitions staged and read back, in a separate process."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from dali_dist.algorithm import Networks
from dali_dist.config import load_config
from dali_dist.distributed import make_accelerator
from dali_dist.models import build_models
from dali_dist.strategy import DDPStrategy, Strategy, ZeroStrategy, make_strategy

from tests.conftest import TINY_GRID

RATES = ["optim.lr_d=0.03", "optim.lr_g=0.01", "optim.beta1=0.6", "optim.beta2=0.95"]


def _cfg(*sets):
    return load_config("grid2d", [*TINY_GRID, *RATES, *sets])


def _ge_groups(cfg, G, E):
    return [{"params": list(G.parameters()), "lr": cfg.optim.lr_g}, {"params": list(E.parameters()), "lr": 0.002}]


def _ids(params):
    return [id(p) for p in params]


@pytest.mark.parametrize("name, kind, stage", [("ddp", DDPStrategy, None), ("zero1", ZeroStrategy, 1),
                                               ("zero2", ZeroStrategy, 2)])
def test_the_config_names_the_strategy(name, kind, stage):
    s = make_strategy(accelerator=None, cfg=_cfg(f"train.strategy={name}"))
    assert type(s) is kind and getattr(s, "stage", None) == stage


def test_half_a_strategy_cannot_be_made():
    with pytest.raises(TypeError, match="abstract"):
        Strategy(None, _cfg())

    class OnlyOptimizers(Strategy):
        def build_optimizers(self, G, D, E, ge_groups):
            return None, None

    with pytest.raises(TypeError, match="wrap"):
        OnlyOptimizers(None, _cfg())


def test_ddp_strategy_in_one_process(tmp_path):
    cfg = _cfg()
    acc = make_accelerator(cfg)
    torch.manual_seed(0)
    G, D, E = build_models(cfg)
    s = DDPStrategy(acc, cfg)
    opt_d, opt_ge = s.build_optimizers(G, D, E, _ge_groups(cfg, G, E))
    assert _ids(opt_d.param_groups[0]["params"]) == _ids(D.parameters()) and len(opt_d.param_groups) == 1
    assert [_ids(g["params"]) for g in opt_ge.param_groups] == [_ids(G.parameters()), _ids(E.parameters())]
    assert opt_d.param_groups[0]["lr"] == 0.03 and [g["lr"] for g in opt_ge.param_groups] == [0.01, 0.002]
    assert opt_d.defaults["betas"] == opt_ge.defaults["betas"] == (0.6, 0.95)

    nets = s.wrap(G, D, E)
    assert isinstance(nets, Networks) and nets.D_for_g is nets.D
    assert s.unwrap(nets.G) is G and s.unwrap(nets.D) is D and s.unwrap(nets.E) is E and s.unwrap(None) is None
    assert [u.name for u in s.updates] == ["d", "ge"]
    assert s.checkpoint_optimizers() == {"d": s.opt_d, "ge": s.opt_ge}
    assert s.stage_partitions(tmp_path, 5) == {} and list(tmp_path.iterdir()) == []
    s.load_partitions(tmp_path)  # nothing per rank to read
    assert s.replicas_diverged() == []

    # the D phase through the strategy against torch Adam on a copy, at lr_d and the config's betas
    ref = build_models(cfg)[1]
    ref.load_state_dict(D.state_dict())
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.03, betas=(0.6, 0.95))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        assert float(s.updates[0].update(nets.D(x)[0].pow(2).mean())) == 0.0
        ref_opt.zero_grad()
        ref(x)[0].pow(2).mean().backward()
        ref_opt.step()
    for a, b in zip(D.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(D.parameters()), next(build_models(cfg)[1].parameters()))


def test_zero_strategy_wraps_plain_torch_adam():
    cfg = _cfg("train.strategy=zero2")
    G, D, E = build_models(cfg)
    s = make_strategy(SimpleNamespace(), cfg)
    opt_d, opt_ge = s.build_optimizers(G, D, E, _ge_groups(cfg, G, E))
    assert type(opt_d) is type(opt_ge) is torch.optim.Adam  # ZeRO wraps it and skips by itself
    assert not opt_d.defaults.get("fused") and opt_d.defaults["lr"] == 0.03
    assert [g["lr"] for g in opt_ge.param_groups] == [0.01, 0.002] and opt_ge.defaults["betas"] == (0.6, 0.95)
    assert s.checkpoint_optimizers() == {}  # each rank keeps its own partition instead


class _OneRank(SimpleNamespace):
    num_processes, process_index, is_main_process, device = 1, 0, True, torch.device("cpu")

    def wait_for_everyone(self):
        pass


def _zero_child(_rank, out):
    """ZeroStrategy with real DeepSpeed engines, in a process of its own."""
    from dali_dist import zero

    res = {}
    cfg = _cfg("train.strategy=zero2")
    G, D, E = build_models(cfg)
    s = make_strategy(_OneRank(), cfg)
    s.build_optimizers(G, D, E, _ge_groups(cfg, G, E))
    nets = s.wrap(G, D, E)
    res["unwrap"] = [s.unwrap(nets.G) is G, s.unwrap(nets.D) is D, s.unwrap(nets.E) is E, nets.D_for_g is D,
                     nets.D is not D, nets.E is E]
    res["updates"] = [(u.name, type(u).__name__) for u in s.updates]
    x, z = torch.randn(8, 2), torch.randn(8, cfg.model.latent_dim)
    s.updates[0].update(nets.D(x)[0].pow(2).mean())
    with torch.no_grad():
        h = D(x)[1]
    s.updates[1].update(nets.G(z).pow(2).mean() + nets.E(h)[0].pow(2).mean())
    run = Path(out) / "run"
    stale = run / "checkpoints" / ".zero-step-7"
    stale.mkdir(parents=True)
    (stale / "left-by-a-killed-save.pt").write_bytes(b"old")
    staged = s.stage_partitions(run, 7)
    res["staged"] = {k: str(v) for k, v in staged.items()}
    res["staged_files"] = sorted(p.name for p in stale.iterdir())
    ckpt = run / "checkpoints" / "step-7"
    ckpt.mkdir()
    shutil.move(str(staged[zero.ZERO_DIR]), ckpt / zero.ZERO_DIR)  # what save_checkpoint does with it
    G2, D2, E2 = build_models(cfg)
    s2 = make_strategy(_OneRank(), cfg)
    s2.build_optimizers(G2, D2, E2, _ge_groups(cfg, G2, E2))
    s2.wrap(G2, D2, E2)
    s2.load_partitions(ckpt)

    def adam(update):
        state = update.engine.optimizer.optimizer.state_dict()["state"]
        return [state[i][k] for i in sorted(state) for k in ("exp_avg", "exp_avg_sq")]

    res["moments"] = [len(adam(u)) for u in s.updates]
    res["loaded"] = [len(adam(a)) == len(adam(b)) and all(torch.equal(u, v) for u, v in zip(adam(a), adam(b)))
                     for a, b in zip(s.updates, s2.updates)]
    torch.save(res, Path(out) / "result.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_zero_strategy_engines_unwrap_and_partitions(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_zero_child, args=(str(tmp_path),), nprocs=1)
    res = torch.load(tmp_path / "result.pt", weights_only=True)
    assert res["unwrap"] == [True] * 6
    assert res["updates"] == [("d", "ZeroPhase"), ("ge", "ZeroPhase")]
    assert res["staged"] == {"zero": str(tmp_path / "run" / "checkpoints" / ".zero-step-7")}
    assert res["staged_files"] == ["optim_d-rank0.pt", "optim_ge-rank0.pt"]  # the stale file was cleared first
    assert res["moments"] == [2, 4]  # D: one flat group; G+E: two groups (exp_avg, exp_avg_sq each)
    assert res["loaded"] == [True, True]  # the second strategy's Adam moments are the first one's
