"""Pictures for humans: a 2D scatter against the grid means, and image grids (PNG, via PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font, no file needed
    except TypeError:
        return ImageFont.load_default()


def scatter_png(points: np.ndarray, path: Path, means: np.ndarray | None = None,
                extent: float = 6.0, size: int = 512, title: str = "", command: str = "train") -> None:
    """Samples as blue dots over the true modes (red crosses) on [-extent, extent]^2, with a
    title, labelled axes and a legend, so the picture reads without the code."""
    left, top, right, bottom = 48, 36, 12, 40  # margins for the tick labels and the title
    img = Image.new("RGB", (left + size + right, top + size + bottom), "white")
    draw = ImageDraw.Draw(img)
    small, big = _font(12), _font(15)

    def px(xy):
        return (left + (xy[..., 0] + extent) / (2 * extent) * (size - 1),
                top + (extent - xy[..., 1]) / (2 * extent) * (size - 1))

    for v in np.linspace(-extent, extent, 7):  # grid lines and tick labels every 2 units
        a, _ = px(np.array([v, 0.0]))
        _, b = px(np.array([0.0, v]))
        draw.line([(a, top), (a, top + size)], fill=(230, 230, 230))
        draw.line([(left, b), (left + size, b)], fill=(230, 230, 230))
        label = f"{v:g}"
        draw.text((a, top + size + 4), label, fill="black", font=small, anchor="mt")
        draw.text((left - 6, b), label, fill="black", font=small, anchor="rm")
    draw.rectangle([(left, top), (left + size, top + size)], outline=(120, 120, 120))
    draw.text((left + size / 2, top + size + 22), "x1", fill="black", font=small, anchor="mt")
    draw.text((12, top + size / 2), "x2", fill="black", font=small, anchor="mm")
    if title:
        draw.text((left + size / 2, 10), title, fill="black", font=big, anchor="mt")

    def cross(x, y):
        draw.line([(x - 6, y), (x + 6, y)], fill=(220, 30, 30), width=2)
        draw.line([(x, y - 6), (x, y + 6)], fill=(220, 30, 30), width=2)

    if means is not None:  # under the samples, so a captured mode shows as a blue blob
        mx, my = px(np.asarray(means, dtype=np.float64))
        for x, y in zip(mx, my):
            cross(x, y)
    xs, ys = px(np.asarray(points, dtype=np.float64))
    for x, y in zip(xs, ys):
        draw.rectangle([(float(x) - 0.5, float(y) - 0.5), (float(x) + 0.5, float(y) + 0.5)], fill=(30, 80, 200))
    # the legend, top left inside the frame, on white so the samples do not hide it
    entries = [("generated sample", "dot")] + ([(f"true mode ({len(means)})", "cross")] if means is not None else [])
    lx, ly = left + 8, top + 8
    draw.rectangle([(lx, ly), (lx + 150, ly + 8 + 18 * len(entries))], fill="white", outline=(160, 160, 160))
    for i, (text, kind) in enumerate(entries):
        cy = ly + 13 + 18 * i
        if kind == "dot":
            draw.rectangle([(lx + 8, cy - 2), (lx + 12, cy + 2)], fill=(30, 80, 200))
        else:
            cross(lx + 10, cy)
        draw.text((lx + 24, cy), text, fill="black", font=small, anchor="lm")
    from .outputs import save_png

    save_png(path, img, command)


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
