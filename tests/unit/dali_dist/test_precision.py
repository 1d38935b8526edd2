"""Per-phase loss scaling and non-finite skips (precision.py), alone and across two processes
(inside the trainer: tests/integration/test_precision_training.py)."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dali_dist import precision
from dali_dist.precision import FP16_INIT_SCALE, PhaseUpdate


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Linear(3, 2)
    return m, torch.optim.Adam(m.parameters(), lr=0.1)


def _loss(m, bad=False):
    x = torch.ones(4, 3)
    out = m(x).pow(2).mean()
    return out * float("inf") if bad else out


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_fused_adam_skips_on_the_device_without_a_host_read(monkeypatch, device):
    """found_inf goes to the fused kernel, which leaves params and moments alone (CPU and GPU)."""
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2).to(device)
    opt = precision.make_adam(m.parameters(), 0.1, (0.5, 0.999), torch.device(device))
    assert opt.defaults["fused"]
    upd = PhaseUpdate("d", opt, backward=lambda l, **k: l.backward(**k), device=device)
    assert upd._on_device_skip
    upd.update(m(torch.ones(4, 3, device=device)).pow(2).mean())
    before = [p.detach().clone() for p in m.parameters()]
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host read in step()"))
    upd.update(m(torch.ones(4, 3, device=device)).pow(2).mean() * float("inf"))
    monkeypatch.undo()
    assert upd.skipped == 1 and all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(s["step"].item() == 1 for s in opt.state.values())


def test_trainer_adam_on_cpu_steps_as_the_adam_update_rule():
    """make_adam's fused CPU kernel against Adam written out by hand (bias-corrected moments),
    over several steps with changing gradients: the same weights to float rounding."""
    torch.manual_seed(0)
    w = torch.randn(50, 7, dtype=torch.float64).float().requires_grad_(True)
    opt = precision.make_adam([w], 1e-2, (0.6, 0.999), torch.device("cpu"))
    w0 = w.detach().double().clone()
    ref, m, v = w0.clone(), torch.zeros(50, 7, dtype=torch.float64), torch.zeros(50, 7, dtype=torch.float64)
    b1, b2, lr, eps = 0.6, 0.999, 1e-2, 1e-8
    for t in range(1, 6):
        g = torch.randn(50, 7)
        w.grad = g.clone()
        opt.step()
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref -= lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    torch.testing.assert_close(w.detach().double(), ref, rtol=0, atol=1e-6)
    assert (w.detach().double() - w0).abs().max() > 2 * lr  # it moved: five steps of about lr each


def test_fp16_scaled_step_equals_plain_step_and_overflow_skips_and_backs_off():
    plain, opt_plain = _model_and_opt()
    scaled, opt_scaled = _model_and_opt()
    ref = PhaseUpdate("ref", opt_plain, backward=lambda l, **k: l.backward(**k))
    upd = PhaseUpdate("d", opt_scaled, backward=lambda l, **k: l.backward(**k), fp16=True)
    assert upd.scale == FP16_INIT_SCALE
    assert not ref.update(_loss(plain)) and not upd.update(_loss(scaled))  # returns "skipped"
    # a power-of-two scale is exact: the unscaled gradients, hence the Adam steps, match
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)

    before = [p.detach().clone() for p in scaled.parameters()]
    adam_steps = [s["step"].item() for s in opt_scaled.state.values()]
    assert upd.update(_loss(scaled, bad=True))
    assert upd.skipped == 1 and upd.scale == FP16_INIT_SCALE / 2
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert [s["step"].item() for s in opt_scaled.state.values()] == adam_steps  # Adam did not move
    assert all(p.grad is None for p in scaled.parameters())  # no stale gradient leaks on


def test_fp16_scale_grows_after_an_interval_of_good_steps(monkeypatch):
    monkeypatch.setattr(precision, "FP16_GROWTH_INTERVAL", 3)
    m, opt = _model_and_opt()
    upd = PhaseUpdate("ge", opt, backward=lambda l, **k: l.backward(**k), fp16=True)
    upd.update(_loss(m, bad=True))
    for _ in range(3):
        assert not upd.update(_loss(m))
    assert upd.scale == FP16_INIT_SCALE  # halved once, doubled once
    state = json.loads(json.dumps(upd.state_dict()))  # JSON round trip: no pickles
    fresh = PhaseUpdate("ge", opt, backward=None, fp16=True)
    fresh.load_state_dict(state)
    # the growth counter restarts after each doubling, as in torch.amp.GradScaler
    assert fresh.state_dict() == upd.state_dict() == {"scale": FP16_INIT_SCALE, "good_steps": 0, "skipped": 1}


def test_bf16_and_fp32_skip_non_finite_gradients_without_scaling():
    m, opt = _model_and_opt()
    upd = PhaseUpdate("d", opt, backward=lambda l, **k: l.backward(**k))
    assert upd.scale == 1.0
    assert upd.update(_loss(m, bad=True)) and upd.scale == 1.0 and upd.skipped == 1
    assert not upd.update(_loss(m)) and upd.skipped == 1
    upd.update(_loss(m, bad=True)), upd.update(_loss(m, bad=True))
    assert upd.pop_longest_run() == 2  # consecutive skips, counted on the device
    assert not upd.update(_loss(m))
    assert upd.pop_longest_run() == 2  # a run still open at a read is carried into the next one
    assert upd.pop_longest_run() == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)

    class Shim:  # the two attributes and the method agree_max uses from an Accelerator
        num_processes, device = 2, torch.device("cpu")

        @staticmethod
        def reduce(t, reduction):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return t

    from dali_dist.distributed import agree_max

    m, opt = _model_and_opt()
    upd = PhaseUpdate("d", opt, backward=lambda l, **k: l.backward(**k), agree=lambda f: agree_max(Shim, f))
    # no DDP here: only rank 1 sees an inf gradient, and rank 0 must skip with it
    skipped = upd.update(_loss(m, bad=rank == 1))
    torch.save({"stepped": not bool(skipped), "w": m.weight.detach().clone()}, f"{out}/rank{rank}.pt")
    # both ranks leave the collective together: tearing gloo down while the peer is still
    # mid-exchange aborted a rank now and then ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_a_skip_on_one_rank_is_a_skip_on_every_rank(tmp_path):
    mp.spawn(_two_ranks, args=(_free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["stepped"] is False and r1["stepped"] is False
    assert torch.equal(r0["w"], r1["w"])
