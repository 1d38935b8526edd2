"""Reconstruction MSE (Table 1, docs/design.md, 'Metric protocols').

Over the whole test split, images scaled to [0, 1]:
    mse_i = mean over pixels (and channels) of (x_i - G(mu(x_i)))^2
with mu(x) = E(D(x).features) for DALI and E(x) for ALI (``models.encode``)
reported as ``mse`` (mean over images) and ``mse_std`` (population std over images).
Paper: MNIST 0.026, CIFAR-10 0.019.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Exported
from ..errors import UserError
from ..models import encode
from .ranks import Ranks


@torch.no_grad()
def per_image_mse(exp: Exported, x: torch.Tensor) -> torch.Tensor:
    """x: float (N, C, H, W) in [-1, 1] on the models' device -> (N,) float64."""
    mu, _ = encode(exp.cfg.model.variant, exp.D, exp.E, x)
    rec = exp.G(mu)
    a = (x.double() + 1) / 2
    b = (rec.double() + 1) / 2
    return ((a - b) ** 2).flatten(1).mean(dim=1)


def reconstruction_mse(exp: Exported, source, *, split: str = "test", batch_size: int, ranks: Ranks,
                       progress: bool = True) -> dict:
    from ..data import describe, eval_batches

    if exp.E is None:
        raise UserError(f"{exp.path}: metric 'mse' needs an encoder; variant {exp.cfg.model.variant!r} has none")
    total = describe(source).splits.get(split)
    device = next(exp.G.parameters()).device
    parts = []
    bar = tqdm(total=(total // ranks.world) if total else None, desc=f"reconstruction ({split})", unit="img",
               disable=not (progress and ranks.is_main), dynamic_ncols=True)
    for x, _, _ in eval_batches(source, split=split, batch_size=batch_size, rank=ranks.rank, world_size=ranks.world):
        parts.append(per_image_mse(exp, x.to(device)).cpu().numpy())
        bar.update(len(x))
    bar.close()
    mse = ranks.gather_rows(np.concatenate(parts) if parts else np.zeros(0, np.float64))
    if len(mse) == 0:
        raise UserError(f"{source}: split {split!r} is empty")
    return {"mse": float(mse.mean()), "mse_std": float(mse.std()), "mse_num_images": int(len(mse))}
