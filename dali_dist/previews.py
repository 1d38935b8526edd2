"""The images a run writes as it trains: samples of G and reconstructions G(mu(x))."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .config import Config
from .mixture import grid_means
from .models import encode
from .visualize import image_grid_png, scatter_png, to_uint8_images


def fixed_test_batch(cfg: Config, n: int = 32) -> Optional[torch.Tensor]:
    """The first n test images, for reconstruction grids (None without image shards/encoder)."""
    if cfg.data.source is None or cfg.model.family != "dcgan" or not cfg.has_encoder:
        return None
    from .data import describe, eval_batches

    if "test" not in describe(cfg.data.source, "test").splits:
        return None
    for x, _, _ in eval_batches(cfg.data.source, split="test", batch_size=n):
        return x[:n]
    return None


def write_reconstructions(run_dir: Path, step: int, cfg: Config, G, D, E, x: torch.Tensor) -> Path:
    """Originals beside their reconstructions G(mu(x)), in pairs of columns."""
    nets = [m for m in (G, D, E)]
    modes = [m.training for m in nets]
    for m in nets:
        m.eval()
    with torch.no_grad():
        mu, _ = encode(cfg, D, E, x)
        rec = G(mu)
    for m, was in zip(nets, modes):
        m.train(was)
    pairs = torch.stack([x.cpu(), rec.float().cpu()], dim=1).flatten(0, 1)
    path = run_dir / "images" / f"recon-{step:07d}.png"
    image_grid_png(to_uint8_images(pairs), path, nrow=16)
    return path


def write_samples(run_dir: Path, step: int, G, z_fixed: torch.Tensor, is_2d: bool) -> Path:
    was_training = G.training
    G.eval()
    with torch.no_grad():
        x = G(z_fixed)
    G.train(was_training)
    if is_2d:
        path = run_dir / "images" / f"samples-{step:07d}.png"
        scatter_png(x.float().cpu().numpy(), path, grid_means().numpy(),
                    title=f"{len(x)} generated samples at step {step:,}")
    else:
        path = run_dir / "images" / f"samples-{step:07d}.png"
        image_grid_png(to_uint8_images(x), path)
    return path
