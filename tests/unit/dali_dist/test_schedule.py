"""Learning-rate schedules, per-network rates (G, D, E) and the encoder-weight ramp."""

import math

import pytest
import torch

from dali_dist.config import load_config
from dali_dist.schedule import lr_factor, ramp_factor
from dali_dist.train import learning_rate_plan, set_learning_rates


def _optimizers(with_encoder: bool):
    g, d, e = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    groups = [{"params": g.parameters()}] + ([{"params": e.parameters()}] if with_encoder else [])
    return {"d": torch.optim.Adam(d.parameters()), "ge": torch.optim.Adam(groups)}


def test_inv_sqrt_epoch_decays_g_and_d_but_not_e_when_schedule_e_is_false():
    cfg = load_config("mnist", ["optim.lr_g=4e-4", "optim.lr_d=2e-4", "optim.lr_e=1e-4", "optim.schedule_e=false"], data="x")
    opts = _optimizers(True)
    plan = learning_rate_plan(cfg, True)
    steps_per_epoch = 600
    for step in (0, 599, 600, 3 * 600 + 5):
        rates = set_learning_rates(step, cfg, steps_per_epoch, opts, plan)
        epoch = step // steps_per_epoch
        assert rates["lr_g"] == pytest.approx(4e-4 / math.sqrt(epoch + 1))
        assert rates["lr_d"] == pytest.approx(2e-4 / math.sqrt(epoch + 1))
        assert rates["lr_e"] == pytest.approx(1e-4)
        assert [g["lr"] for g in opts["ge"].param_groups] == [rates["lr_g"], rates["lr_e"]]
        assert opts["d"].param_groups[0]["lr"] == rates["lr_d"]


def test_mnist_preset_trains_g_d_and_e_at_the_one_measured_rate_with_only_g_and_d_decayed():
    # the rate README and BENCHMARKS give for the preset (chosen by measurement for every variant)
    plan = learning_rate_plan(load_config("mnist", [], data="x"), True)
    assert plan == {"d": [(4e-4, True)], "ge": [(4e-4, True), (4e-4, False)]}


def test_encoder_rate_defaults_to_the_generators_and_follows_the_schedule():
    cfg = load_config("mnist", ["optim.lr_g=3e-4", "optim.schedule_e=true"], data="x")
    cfg.optim.lr_e = None
    rates = set_learning_rates(1200, cfg, 600, _optimizers(True), learning_rate_plan(cfg, True))
    assert rates["lr_e"] == rates["lr_g"] == pytest.approx(3e-4 / math.sqrt(3))


def test_gan_has_one_generator_group():
    cfg = load_config("mnist", ["model.variant=gan"], data="x")
    rates = set_learning_rates(0, cfg, 600, _optimizers(False), learning_rate_plan(cfg, False))
    assert set(rates) == {"lr_d", "lr_g"}


def test_warmup_applies_to_an_unscheduled_encoder_too():
    cfg = load_config("mnist", ["optim.warmup_steps=10", "optim.schedule=cosine"], data="x")
    assert lr_factor(4, 100, cfg.optim, 10, scheduled=False) == pytest.approx(0.5)
    assert lr_factor(50, 100, cfg.optim, 10, scheduled=False) == 1.0
    # 40 of the 90 steps after the warm-up: 0.5 (1 + cos(pi 40 / 90)), min_lr_ratio 0
    assert lr_factor(50, 100, cfg.optim, 10, scheduled=True) == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 90)))


def test_warmup_is_linear_and_reaches_the_base_rate_on_its_last_step():
    cfg = load_config("mnist", ["optim.warmup_steps=4", "optim.schedule=inv-sqrt-epoch"], data="x")
    assert [lr_factor(s, 100, cfg.optim, 600) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cfg = load_config("mnist", ["optim.schedule=constant"], data="x")
    assert {lr_factor(s, 100, cfg.optim, 10) for s in (0, 1, 50, 99, 500)} == {1.0}


@pytest.mark.parametrize("warmup, min_ratio", [(0, 0.0), (5, 0.1)])
def test_cosine_matches_torchs_cosine_annealing(warmup, min_ratio):
    """After the warm-up, the rate follows torch's CosineAnnealingLR down to min_lr_ratio (the
    independent reference), and stays there past train.steps."""
    total, base = 45, 2e-3
    cfg = load_config("mnist", ["optim.schedule=cosine", f"optim.warmup_steps={warmup}",
                                f"optim.min_lr_ratio={min_ratio}", f"train.steps={total}"], data="x")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=base * min_ratio)
    for step in range(warmup, total + 1):
        assert base * lr_factor(step, total, cfg.optim, 10) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6, abs=1e-12)
        opt.step()
        sched.step()
    assert lr_factor(total + 100, total, cfg.optim, 10) == pytest.approx(min_ratio)


def test_lambda_ramp_is_linear_from_zero():
    assert [ramp_factor(s, 4) for s in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert ramp_factor(0, 0) == 1.0


@pytest.mark.parametrize("order,d_steps,batches_per_step", [("alternating", 3, 3), ("alternating", 1, 1),
                                                            ("simultaneous", 1, 1)])
def test_an_epoch_is_a_pass_over_the_data_whatever_d_steps(order, d_steps, batches_per_step):
    # an alternating step reads d_steps real batches: with 600 batches per epoch and d_steps=3
    # the epoch changes every 200 steps, not every 600
    cfg = load_config("mnist", [f"train.update_order={order}", f"train.d_steps={d_steps}"], data="x")
    opts, plan = _optimizers(True), learning_rate_plan(cfg, True)
    for step in (0, 199, 200, 599, 600, 1000):
        epoch = step * batches_per_step // 600
        rates = set_learning_rates(step, cfg, 600, opts, plan)
        assert rates["lr_d"] == pytest.approx(cfg.optim.lr_d / math.sqrt(epoch + 1))
