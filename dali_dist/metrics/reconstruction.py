"""Reconstruction MSE (Table 1, docs/design.md, 'Metric protocols').

Over the whole test split, images scaled to [0, 1]:
    mse_i = mean over pixels (and channels) of (x_i - G(mu(x_i)))^2
with mu(x) = E(D(x).features) for DALI and E(x) for ALI (``models.encode``)
reported as ``mse`` (mean over images) and ``mse_std`` (population std over images).
Paper: MNIST 0.026, CIFAR-10 0.019.

The cycle on G's own samples (``cycle_errors``) splits that error in two: with z the
evaluation draws and x = G(z) saved as 8-bit images,
    cycle_mse_i  = mean over pixels of (x_i - G(mu(x_i)))^2, [0, 1] scale, as mse
    latent_mse   = mean over samples and dimensions of (z - mu(x))^2
An encoder that inverts G exactly scores 0 on both; a code that ignores x scores about 1 on
latent_mse (E[z^2] for z ~ N(0, I)). Where cycle_mse is far below mse, the encoder inverts G
and the real-data error comes from test images G cannot draw (or that E reads differently
from G's), not from a poor inversion.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Exported
from ..errors import UserError
from ..generate import per_sample_latents
from ..models import encode
from ..visualize import to_uint8_images
from .ranks import Ranks


@torch.no_grad()
def round_trip(exp: Exported, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: float (N, C, H, W) in [-1, 1] on the models' device -> (mu(x), per-image MSE of
    G(mu(x)) on the [0, 1] scale, (N,) float64)."""
    mu, _ = encode(exp.cfg, exp.D, exp.E, x)
    rec = exp.G(mu)
    a = (x.double() + 1) / 2
    b = (rec.double() + 1) / 2
    return mu, ((a - b) ** 2).flatten(1).mean(dim=1)


def per_image_mse(exp: Exported, x: torch.Tensor) -> torch.Tensor:
    return round_trip(exp, x)[1]


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


@torch.no_grad()
def cycle_errors(exp: Exported, n: int, *, seed: int, batch_size: int, ranks: Ranks, progress: bool = True) -> dict:
    """``cycle_mse``, ``cycle_mse_std`` and ``latent_mse`` over generated samples 0..n-1 (the
    evaluation's seeded z, shared by ranks and gathered in sample order; module docstring)."""
    if exp.E is None:
        raise UserError(f"{exp.path}: metric 'cycle' needs an encoder; variant {exp.cfg.model.variant!r} has none")
    device = next(exp.G.parameters()).device
    mine = ranks.share(n)
    img, lat = [], []
    bar = tqdm(total=len(mine), desc="cycle (generated)", unit="img", disable=not (progress and ranks.is_main),
               dynamic_ncols=True)
    for start in range(mine.start, mine.stop, batch_size):
        z = per_sample_latents(range(start, min(start + batch_size, mine.stop)), exp.cfg.model.latent_dim, seed)
        u8 = torch.from_numpy(to_uint8_images(exp.G(z.to(device)))).permute(0, 3, 1, 2)
        x = (u8.float() / 127.5 - 1).to(device)  # the sample as a saved image, read back as the data path does
        mu, err = round_trip(exp, x)
        img.append(err.cpu().numpy())
        lat.append((z.double() - mu.double().cpu()).pow(2).mean(dim=1).numpy())
        bar.update(len(z))
    bar.close()
    img = ranks.gather_rows(np.concatenate(img) if img else np.zeros(0, np.float64))
    lat = ranks.gather_rows(np.concatenate(lat) if lat else np.zeros(0, np.float64))
    return {"cycle_mse": float(img.mean()), "cycle_mse_std": float(img.std()), "latent_mse": float(lat.mean()),
            "cycle_num_samples": int(len(img))}
