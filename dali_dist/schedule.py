"""Learning-rate schedules as a pure function of the step (no scheduler state to save)."""

from __future__ import annotations

import math

from .config import OptimConfig


def lr_factor(step: int, total_steps: int, optim: OptimConfig, steps_per_epoch: int, scheduled: bool = True) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based); ``scheduled=False`` applies
    the warm-up only (a network whose rate does not decay, as the authors' encoder)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant" or not scheduled:
        return 1.0
    if optim.schedule == "inv-sqrt-epoch":  # the authors' lr / sqrt(epoch + 1)
        return 1.0 / math.sqrt(step // max(steps_per_epoch, 1) + 1)
    # cosine from 1 to min_lr_ratio over the steps after warm-up
    span = max(total_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ramp_factor(step: int, ramp_steps: int) -> float:
    """Linear ramp from 0 (step 0) to 1 (step ``ramp_steps`` and after); 1 when ramp_steps is 0."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return 1.0
    return step / ramp_steps
