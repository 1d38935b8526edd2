"""One phase's backward and optimizer step, with its own fp16 loss scale and non-finite skips.

Why not Accelerate's GradScaler: it is one scaler shared by both optimizers, and in a GAN
step D's optimizer steps before G's backward runs, so an overflow in one phase would skip or
rescale the other. Each phase here (D, and G+E) owns a scale, checks its own gradients after
backward, and skips only its own step. The skip is agreed across ranks (``agree``), so no
rank ever steps alone; the count lands in stats and in the checkpoint's train state.

The same check guards bf16 and fp32 (scale fixed at 1): a NaN or inf gradient skips the step
instead of poisoning Adam's moments.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

FP16_INIT_SCALE = 2.0 ** 16
FP16_GROWTH_INTERVAL = 2000  # steps without overflow before the scale doubles (GradScaler's default)


def _params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def grads_finite_unscaled(params: list[torch.Tensor], inv_scale: float) -> torch.Tensor:
    """Unscale the gradients in place; returns a 0-d float tensor, 1.0 if any is not finite."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if inv_scale != 1.0:
        torch._foreach_mul_(grads, inv_scale)
    # a sum of norms is non-finite iff some gradient is: one reduction, not one sync per tensor
    total = torch.stack([n.float() for n in torch._foreach_norm(grads)]).sum()
    return (~torch.isfinite(total)).float()


class PhaseUpdate:
    """backward(loss) then step() -> True when the optimizer stepped, False when skipped."""

    def __init__(
        self,
        name: str,
        optimizer,
        *,
        backward: Callable[..., None],
        agree: Optional[Callable[[torch.Tensor], bool]] = None,
        fp16: bool = False,
    ):
        self.name = name
        self.optimizer = optimizer
        self._backward = backward
        self._agree = agree or (lambda flag: bool(flag.item()))
        self.fp16 = fp16
        self.scale = FP16_INIT_SCALE if fp16 else 1.0
        self.good_steps = 0  # steps since the last overflow (fp16 growth)
        self.skipped = 0  # total skipped steps of this phase
        self.last_skipped = False

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self._backward(loss * self.scale if self.scale != 1.0 else loss, **kwargs)

    def step(self) -> bool:
        flag = grads_finite_unscaled(_params(self.optimizer), 1.0 / self.scale)
        bad = self._agree(flag)
        self.last_skipped = bad
        if bad:
            self.skipped += 1
            self.good_steps = 0
            if self.fp16:
                self.scale = max(self.scale * 0.5, 1.0)
        else:
            self.optimizer.step()
            self.good_steps += 1
            if self.fp16 and self.good_steps % FP16_GROWTH_INTERVAL == 0:
                self.scale *= 2.0
        self.zero_grad()  # free memory; no stale gradients leak into the next phase
        return not bad

    def update(self, loss: torch.Tensor) -> bool:
        """zero_grad, backward, step: the whole phase for one loss."""
        self.zero_grad()
        self.backward(loss)
        return self.step()

    # JSON-friendly: the train state holds no pickles
    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state.get("scale", self.scale))
        self.good_steps = int(state.get("good_steps", 0))
        self.skipped = int(state.get("skipped", 0))
