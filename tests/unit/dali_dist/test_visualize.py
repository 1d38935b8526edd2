"""visualize.py: [-1, 1] tensors to uint8 images (the inverse of decode.to_float), image grids
(layout, white padding, whole-factor nearest-neighbour upscaling to MIN_GRID_PX), and the 2D
scatter PNG (size, mark, dots and crosses where the coordinates put them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dali_dist.decode import to_float
from dali_dist.visualize import MIN_GRID_PX, image_grid, image_grid_png, scatter_png, to_uint8_images

BLUE, RED = (30, 80, 200), (220, 30, 30)


def test_to_uint8_images_inverts_to_float_and_clamps():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    back = to_uint8_images(to_float(u))
    assert back.dtype == np.uint8 and back.shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(back[0, :, :, 0], u[0, 0].numpy())
    x = torch.tensor([-1.0, 0.0, 1.0, 1.5, -3.0, 0.5]).view(1, 1, 1, 6)
    assert to_uint8_images(x).ravel().tolist() == [0, 128, 255, 255, 0, 191]  # 0.5 -> 191.25 -> 191


def test_to_uint8_images_is_channels_last():
    x = torch.stack([torch.full((2, 3), -1.0), torch.zeros(2, 3), torch.ones(2, 3)]).unsqueeze(0)  # (1, 3, 2, 3)
    out = to_uint8_images(x)
    assert out.shape == (1, 2, 3, 3)
    assert (out[..., 0] == 0).all() and (out[..., 1] == 128).all() and (out[..., 2] == 255).all()


def _expected_canvas(images, nrow, pad):
    """The grid built pixel by pixel, independently of image_grid's slicing."""
    n, h, w, c = images.shape
    rows = math.ceil(n / nrow)
    H, W = rows * (h + pad) + pad, nrow * (w + pad) + pad
    canvas = np.full((H, W, c), 255, np.uint8)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        for y in range(h):
            for x in range(w):
                canvas[top + y, left + x] = images[i, y, x]
    return canvas


@pytest.mark.parametrize("n, h, w, c, nrow, pad", [(5, 3, 4, 3, 2, 2), (7, 2, 2, 1, None, 1), (1, 5, 5, 3, None, 0),
                                                   (6, 4, 3, 1, 6, 3)])
def test_image_grid_layout_and_upscaling(n, h, w, c, nrow, pad):
    rng = np.random.default_rng(n)
    images = rng.integers(0, 255, (n, h, w, c), dtype=np.uint8)  # never 255: padding stays distinguishable
    canvas = _expected_canvas(images, nrow or math.ceil(math.sqrt(n)), pad)
    img = image_grid(images, nrow, pad, min_px=50)
    factor = math.ceil(50 / max(canvas.shape[:2]))
    assert img.mode == ("L" if c == 1 else "RGB")
    assert img.size == (canvas.shape[1] * factor, canvas.shape[0] * factor)
    got = np.asarray(img)
    want = canvas.repeat(factor, 0).repeat(factor, 1)
    np.testing.assert_array_equal(got, want[..., 0] if c == 1 else want)


def test_grids_are_upscaled_to_be_read():
    img = image_grid(np.zeros((64, 28, 28, 1), np.uint8))
    # 8 x (28 + 2) + 2 = 242 px, upscaled by the smallest whole factor that reaches 512
    assert img.size == (242 * 3, 242 * 3) and max(img.size) >= MIN_GRID_PX
    big = image_grid(np.zeros((64, 64, 64, 3), np.uint8))
    assert big.size == (530, 530)  # already readable: left as it is
    assert image_grid(np.zeros((4, 256, 256, 3), np.uint8), pad=0).size == (512, 512)  # exactly min_px: no factor


def test_image_grid_png_writes_the_grid_with_the_mark(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    image_grid_png(images, tmp_path / "sub" / "g.png", nrow=3, command="sample")
    with Image.open(tmp_path / "sub" / "g.png") as im:
        assert im.info["Software"] == "dali-dist sample"
        np.testing.assert_array_equal(np.asarray(im), np.asarray(image_grid(images, 3)))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["g.png"]


def _px(xy, extent=6.0, size=512, left=48, top=36):
    return (int(left + (xy[0] + extent) / (2 * extent) * (size - 1)),
            int(top + (extent - xy[1]) / (2 * extent) * (size - 1)))


def test_scatter_png_size_mark_dots_and_crosses(tmp_path):
    points = np.array([[3.0, -3.0], [-5.0, -5.0]])
    means = np.array([[-4.0, 4.0], [2.0, 0.0]])
    scatter_png(points, tmp_path / "s.png", means=means, title="step 5", command="evaluate")
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (48 + 512 + 12, 36 + 512 + 40) and im.mode == "RGB"
        assert im.info["Software"] == "dali-dist evaluate"
        px = im.load()
        for p in points:
            assert px[_px(p)] == BLUE
        for m in means:
            x, y = _px(m)
            assert px[x, y] == RED and px[x - 5, y] == RED and px[x, y + 5] == RED  # a cross, not a dot
        assert px[_px((1.0, 1.0))] == (255, 255, 255)  # nothing drawn between modes
    scatter_png(points, tmp_path / "small.png", size=100, extent=10.0)
    with Image.open(tmp_path / "small.png") as im:
        assert im.size == (48 + 100 + 12, 36 + 100 + 40) and im.info["Software"] == "dali-dist train"
        assert im.load()[_px((3.0, -3.0), extent=10.0, size=100)] == BLUE


def test_scatter_png_without_means_draws_no_cross(tmp_path):
    scatter_png(np.zeros((0, 2)), tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as im:
        colours = {c for _, c in im.getcolors(1 << 16)}
    assert RED not in colours and BLUE in colours  # the legend's dot only
