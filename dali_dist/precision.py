"""One phase's backward and optimizer step, with its own fp16 loss scale and non-finite skips.

Why not Accelerate's GradScaler: it is one scaler shared by both optimizers, and in a GAN
step D's optimizer steps before G's backward runs, so an overflow in one phase would skip or
rescale the other. Each phase here (D, and G+E) owns a scale, checks its own gradients after
backward, and skips only its own step. The verdict is agreed across ranks (``agree``), so no
rank ever steps alone; counts land in stats and in the checkpoint's train state.

The same check guards bf16 and fp32 (scale fixed at 1): a NaN or inf gradient skips the step
instead of poisoning Adam's moments.

No host synchronisation on GPU: the scale, the verdict and the counters are device tensors
(torch's own AMP kernels check, unscale and update the scale), the agreement is an all-reduce
on the device, and a fused Adam (on CUDA and CPU) skips on the device when handed
``found_inf`` (as GradScaler does). Each .item() would otherwise stall the launch queue twice
per iteration; measured on an H100 that was most of the trainer's overhead over a plain loop
(benchmarks/train_step.py). Other optimizers fall back to one host read per phase.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

FP16_INIT_SCALE = 2.0 ** 16
FP16_GROWTH_INTERVAL = 2000  # steps without overflow before the scale doubles (GradScaler's default)


FUSED_ADAM_DEVICES = ("cuda", "cpu")


def make_adam(params, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam, fused on CUDA and CPU: one kernel per step, and on-device skips through ``found_inf``.

    Why fused on CPU too: the fused kernel reads each parameter, gradient and moment once,
    where torch's default (foreach) Adam makes several passes with model-sized temporaries.
    For the mnist preset's 13.7M weights one step of both optimizers took 34 ms foreach and
    13 ms fused on 2 cores, the same weights to float rounding (benchmarks/adam_step.py); the
    bf16 trainer step fell from 252 to 195 ms (BENCHMARKS.md). Other devices keep torch's
    default.
    """
    fused = torch.device(device).type in FUSED_ADAM_DEVICES
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)


def plain_backward(loss: torch.Tensor, **kwargs) -> None:
    """``accelerator.backward`` would only divide by gradient-accumulation steps and apply its
    GradScaler, neither of which this trainer uses; DDP's hooks fire on a plain backward."""
    loss.backward(**kwargs)


def _inner(optimizer):
    """The torch optimizer under Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class PhaseUpdate:
    """backward(loss) then step() -> 0-d tensor, 1.0 where the step was skipped."""

    def __init__(
        self,
        name: str,
        optimizer,
        *,
        backward: Callable[..., None],
        agree: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        fp16: bool = False,
        device: torch.device | str = "cpu",
    ):
        self.name = name
        self.optimizer = optimizer
        self._backward = backward
        self._agree = agree or (lambda flag: flag)
        self.fp16 = fp16
        device = torch.device(device)
        self._scale = torch.full((), FP16_INIT_SCALE if fp16 else 1.0, device=device)
        self._growth = torch.zeros((), dtype=torch.int32, device=device)  # good steps since the last overflow
        self._skipped = torch.zeros((), device=device)
        self._run = torch.zeros((), device=device)  # skipped steps in a row, now
        self._max_run = torch.zeros((), device=device)  # the longest such run since the last read
        self._one = torch.ones((), device=device)
        # The torch optimizer itself, not Accelerate's wrapper: with no gradient accumulation and
        # no Accelerate scaler the wrapper adds nothing but host time (it looks up optional
        # packages on disk in every step() and inspects signatures in every zero_grad()).
        self._inner = inner = _inner(optimizer)
        self._on_device_skip = bool(inner.defaults.get("fused")) and isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))

    # host reads, for logs and checkpoints only
    @property
    def scale(self) -> float:
        return float(self._scale)

    @property
    def skipped(self) -> int:
        return int(self._skipped)

    def pop_longest_run(self) -> int:
        """The longest run of consecutive skips since the last call (then reset to the current run)."""
        longest = int(self._max_run)
        self._max_run.copy_(self._run)
        return longest

    def zero_grad(self) -> None:
        self._inner.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self._backward(loss * self._scale if self.fp16 else loss, **kwargs)

    def step(self) -> torch.Tensor:
        grads = [p.grad for p in _params(self._inner) if p.grad is not None]
        found_inf = torch.zeros((), device=self._scale.device)
        if grads:
            inv_scale = self._scale.reciprocal() if self.fp16 else self._one
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        found_inf = self._agree(found_inf)
        inner = self._inner
        if self._on_device_skip:
            inner.found_inf, inner.grad_scale = found_inf, None  # the fused kernel skips on the device
            try:
                inner.step()
            finally:
                del inner.found_inf, inner.grad_scale
        elif not found_inf.item():
            inner.step()
        if self.fp16:
            torch._amp_update_scale_(self._scale, self._growth, found_inf, 2.0, 0.5, FP16_GROWTH_INTERVAL)
        self._skipped += found_inf
        self._run.add_(1).mul_(found_inf)
        torch.maximum(self._max_run, self._run, out=self._max_run)
        self.zero_grad()  # free memory; no stale gradients leak into the next phase
        return found_inf

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        """zero_grad, backward, step: the whole phase for one loss."""
        self.zero_grad()
        self.backward(loss)
        return self.step()

    # JSON-friendly: the train state holds no pickles
    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": int(self._growth), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self._scale.fill_(float(state.get("scale", self.scale)))
        self._growth.fill_(int(state.get("good_steps", 0)))
        self._skipped.fill_(int(state.get("skipped", 0)))
