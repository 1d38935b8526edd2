"""Learning-rate schedules as a pure function of the step (no scheduler state to save)."""

from __future__ import annotations

import math

from .config import OptimConfig


def lr_factor(step: int, total_steps: int, optim: OptimConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "inv-sqrt-epoch":  # the authors' lr / sqrt(epoch + 1)
        return 1.0 / math.sqrt(step // max(steps_per_epoch, 1) + 1)
    # cosine from 1 to min_lr_ratio over the steps after warm-up
    span = max(total_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
