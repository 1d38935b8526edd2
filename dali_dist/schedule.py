"""Learning-rate schedules as a pure function of the step (no scheduler state to save)."""

from __future__ import annotations

import math

from .config import Config, OptimConfig


def lr_factor(step: int, total_steps: int, optim: OptimConfig, batches_per_epoch: int, scheduled: bool = True,
              batches_per_step: int = 1) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based); ``scheduled=False`` applies
    the warm-up only (a network whose rate does not decay, as the authors' encoder). An epoch
    is a pass over the data: a step that reads ``batches_per_step`` real batches (d_steps)
    moves that many batches through it."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant" or not scheduled:
        return 1.0
    if optim.schedule == "inv-sqrt-epoch":  # the authors' lr / sqrt(epoch + 1)
        return 1.0 / math.sqrt(step * batches_per_step // max(batches_per_epoch, 1) + 1)
    # cosine from 1 to min_lr_ratio over the steps after warm-up
    span = max(total_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ramp_factor(step: int, ramp_steps: int) -> float:
    """Linear ramp from 0 (step 0) to 1 (step ``ramp_steps`` and after); 1 when ramp_steps is 0."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return 1.0
    return step / ramp_steps


def learning_rate_plan(cfg: Config, has_encoder: bool) -> dict[str, list[tuple[float, bool]]]:
    """(base rate, follows the schedule) per param group of each optimizer: D; G then E."""
    o = cfg.optim
    ge = [(o.lr_g, True)]
    if has_encoder:
        ge.append((o.lr_e if o.lr_e is not None else o.lr_g, o.schedule_e))
    return {"d": [(o.lr_d, True)], "ge": ge}


def set_learning_rates(step: int, cfg: Config, batches_per_epoch: int, optimizers: dict, plan: dict) -> dict[str, float]:
    """Set every param group's rate for ``step`` (a pure function of the step: nothing to
    save); returns the rates by network (lr_d, lr_g, lr_e) for the logs."""
    names = {"d": ["lr_d"], "ge": ["lr_g", "lr_e"]}
    out = {}
    for key, opt in optimizers.items():
        for group, (base, scheduled), name in zip(opt.param_groups, plan[key], names[key]):
            # every step reads d_steps real batches (simultaneous updates take d_steps=1)
            group["lr"] = base * lr_factor(step, cfg.train.steps, cfg.optim, batches_per_epoch, scheduled,
                                           batches_per_step=cfg.train.d_steps)
            out[name] = group["lr"]
    return out
