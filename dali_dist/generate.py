"""Seeded generation from an exported checkpoint: z of sample i is a function of (seed, i)
alone, so results do not depend on batch size, device count or global RNG state."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from .atomic import atomic_path
from .checkpoint import Exported
from .errors import UserError
from .outputs import check_file, check_folder, save_png
from .seeding import generator
from .visualize import image_grid_png, to_uint8_images


def per_sample_latents(indices, dim: int, seed: int) -> torch.Tensor:
    return torch.stack([torch.randn(dim, generator=generator("sample", seed, i)) for i in indices])


class GenerationStopped(Exception):
    """A stop was requested (SIGTERM/SIGUSR1) between batches; nothing was written."""


@torch.no_grad()
def generate(exp: Exported, n: int, *, seed: int, batch_size: int = 500, progress: bool = False,
             should_stop: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """n samples from G as a float CPU tensor ((n, 2) or (n, C, H, W) in [-1, 1]).

    ``should_stop`` is polled between batches: a long export on a preemptible node ends
    promptly, without a partial output, when the scheduler asks."""
    device = next(exp.G.parameters()).device
    out = []
    with tqdm(total=n, disable=not progress, unit="img", desc="sample") as bar:
        for start in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped after {start} of {n} samples")
            m = min(batch_size, n - start)
            z = per_sample_latents(range(start, start + m), exp.cfg.model.latent_dim, seed).to(device)
            out.append(exp.G(z).float().cpu())
            bar.update(m)
    return torch.cat(out)


def sample_file_names(num: int) -> list[str]:
    """What ``write_samples`` puts in a folder: checked before sampling (outputs.py)."""
    return [f"{i:06d}.png" for i in range(num)] + ["grid.png"]


def check_samples_out(out: Path, num: int, is_2d: bool, overwrite: bool) -> None:
    """Refuse a bad --out before the (possibly long) sampling, not after it."""
    out = Path(out)
    if out.suffix == ".npy":
        check_file(out, overwrite=overwrite)
    elif is_2d:
        raise UserError(f"{out}: 2D samples are written as a .npy file")
    else:
        check_folder(out, sample_file_names(num), overwrite=overwrite)


def write_samples(samples: torch.Tensor, out: Path, is_2d: bool) -> None:
    """``.npy``: (N, 2) float32 or (N, H, W, C) uint8; a directory: PNG files (+ grid)."""
    out = Path(out)
    if out.suffix == ".npy":
        arr = samples.numpy().astype(np.float32) if is_2d else to_uint8_images(samples)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:  # a handle: numpy adds no suffix
            np.save(fh, arr)
        return
    if is_2d:
        raise UserError(f"{out}: 2D samples are written as a .npy file")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    images = to_uint8_images(samples)
    for i, img in enumerate(images):
        save_png(out / f"{i:06d}.png", Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), "sample",
                 durable=False)
    image_grid_png(images[:64], out / "grid.png", command="sample")
