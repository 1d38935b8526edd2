"""Exponential moving average of weights (used for export when train.ema_beta > 0)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, beta: float):
        self.beta = beta
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - self.beta)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)  # BatchNorm statistics follow the live model
