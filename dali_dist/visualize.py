"""Pictures for humans: a 2D scatter against the grid means, and image grids (PNG, via PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def scatter_png(points: np.ndarray, path: Path, means: np.ndarray | None = None,
                extent: float = 6.0, size: int = 512) -> None:
    """Samples as blue dots, component means as red crosses, on [-extent, extent]^2."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def px(xy):
        return ((xy[..., 0] + extent) / (2 * extent) * (size - 1),
                (extent - xy[..., 1]) / (2 * extent) * (size - 1))

    for v in np.linspace(-extent, extent, 7):  # light grid lines every 2 units
        a, _ = px(np.array([v, 0.0]))
        draw.line([(a, 0), (a, size)], fill=(230, 230, 230))
        draw.line([(0, a), (size, a)], fill=(230, 230, 230))
    if means is not None:  # under the samples, so a captured mode shows as a blue blob
        mx, my = px(np.asarray(means, dtype=np.float64))
        for x, y in zip(mx, my):
            draw.line([(x - 6, y), (x + 6, y)], fill=(220, 30, 30))
            draw.line([(x, y - 6), (x, y + 6)], fill=(220, 30, 30))
    xs, ys = px(np.asarray(points, dtype=np.float64))
    for x, y in zip(xs, ys):
        draw.rectangle([(float(x) - 0.5, float(y) - 0.5), (float(x) + 0.5, float(y) + 0.5)], fill=(30, 80, 200))
    img.save(path)


def to_uint8_images(x) -> np.ndarray:
    """(N, C, H, W) tensor in [-1, 1] -> (N, H, W, C) uint8."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


MIN_GRID_PX = 512  # a grid of 28 px images is upscaled to at least this wide or tall, to be read


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, min_px: int = MIN_GRID_PX) -> Image.Image:
    """(N, H, W, C) uint8 images tiled with ``nrow`` per row, upscaled by a whole factor with
    nearest neighbour (pixels stay pixels) until the longer side reaches ``min_px``."""
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol_rows = int(np.ceil(n / nrow))
    canvas = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    factor = max(1, -(-min_px // max(canvas.shape[:2])))
    if factor > 1:
        canvas = canvas.repeat(factor, axis=0).repeat(factor, axis=1)
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def image_grid_png(images: np.ndarray, path: Path, nrow: int | None = None, pad: int = 2, *,
                   command: str = "train") -> None:
    """The grid as a PNG carrying dali-dist's mark (outputs.py), written atomically."""
    from .outputs import save_png

    save_png(path, image_grid(images, nrow, pad), command)
