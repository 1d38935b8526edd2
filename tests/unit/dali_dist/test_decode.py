"""decode.py: image bytes to uint8 arrays (PGM/PPM, PNG, JPEG), batches with channel
conversion and placeholders for bad samples, and uint8 to float in [-1, 1]. Expected pixels
come from numpy and PIL directly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dali_dist.corrupt import Bad, CorruptLog
from dali_dist.decode import (WorkerFailure, assemble_batch, decode_batch, decode_image, finish_item, to_float,
                              to_tensors)
from dali_dist.errors import UserError

RNG = np.random.default_rng(0)


def _pnm(arr: np.ndarray, maxval: int = 255) -> tuple[str, bytes]:
    h, w, c = arr.shape
    return ("ppm" if c == 3 else "pgm"), (b"P6" if c == 3 else b"P5") + b"\n%d %d\n%d\n" % (w, h, maxval) + arr.tobytes()


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _img(h, w, c):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ decode_image


@pytest.mark.parametrize("c", [1, 3])
def test_pgm_ppm_decode_exactly(c):
    arr = _img(3, 5, c)
    ext, data = _pnm(arr)
    got = decode_image(ext, data, "u", "k")
    assert got.dtype == np.uint8 and got.shape == (3, 5, c)
    np.testing.assert_array_equal(got, arr)
    np.testing.assert_array_equal(decode_image("pnm", data, "u", "k", expect=(3, 5)), arr)


@pytest.mark.parametrize("c", [1, 3])
def test_png_decodes_exactly(c):
    arr = _img(4, 6, c)
    got = decode_image("png", _png(arr), "u", "k")
    assert got.shape == (4, 6, c)
    np.testing.assert_array_equal(got, arr)


def test_png_with_alpha_or_a_palette_becomes_rgb():
    rgba = np.concatenate([_img(4, 4, 3), np.full((4, 4, 1), 7, np.uint8)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image("png", buf.getvalue(), "u", "k"), rgba[:, :, :3])
    pal = _png(_img(4, 4, 3), mode="P")
    want = np.asarray(Image.open(io.BytesIO(pal)).convert("RGB"))
    np.testing.assert_array_equal(decode_image("png", pal, "u", "k"), want)


def test_jpeg_decodes_to_the_right_shape():
    buf = io.BytesIO()
    Image.fromarray(_img(8, 8, 3)).save(buf, format="JPEG")
    got = decode_image("jpg", buf.getvalue(), "u", "k", expect=(8, 8))
    assert got.shape == (8, 8, 3) and got.dtype == np.uint8


@pytest.mark.parametrize("ext, data, msg", [
    ("pgm", b"P5\n2 2\n65535\n" + bytes(8), "not a binary 8-bit PGM/PPM"),
    ("pgm", b"P2\n2 2\n255\n1 2 3 4", "not a binary 8-bit PGM/PPM"),
    ("ppm", b"garbage", "not a binary 8-bit PGM/PPM"),
    ("ppm", b"P6\n2 2\n255\n" + bytes(11), "truncated PGM/PPM"),
    ("png", b"not a png at all", "cannot decode png (UnidentifiedImageError: cannot identify image file)"),
    ("png", _png(np.zeros((4, 4, 3), np.uint8))[:-30], "cannot decode png ("),
])
def test_bad_bytes_are_one_line_naming_shard_and_sample(ext, data, msg):
    with pytest.raises(UserError) as info:
        decode_image(ext, data, "shard-3.tar", "key7")
    text = str(info.value)
    assert text.startswith("shard-3.tar: sample key7") and msg in text
    assert " at 0x" not in text  # no object addresses


def test_another_size_is_refused_before_decoding():
    # a header claiming 100000 x 100000 pixels: refused without allocating them
    with pytest.raises(UserError, match=r"^u: sample k is 100000x100000, expected 4x3$"):
        decode_image("pgm", b"P5\n100000 100000\n255\n" + bytes(12), "u", "k", expect=(3, 4))
    with pytest.raises(UserError, match=r"^u: sample k is 6x4, expected 4x4$"):
        decode_image("png", _png(_img(4, 6, 1)), "u", "k", expect=(4, 4))


# ------------------------------------------------------------------------------------------ decode_batch


def test_decode_batch_is_nchw_in_record_order():
    imgs = [_img(4, 4, 3) for _ in range(3)]
    recs = [("a", _pnm(imgs[0]), 0), ("b", ("png", _png(imgs[1])), 1), ("c", _pnm(imgs[2]), 2)]
    out = decode_batch(recs, (3, 4, 4), "u")
    assert out.shape == (3, 3, 4, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.stack(imgs).transpose(0, 3, 1, 2))


def test_decode_batch_converts_channels():
    grey, rgb = _img(4, 4, 1), _img(4, 4, 3)
    as_rgb = decode_batch([("g", ("png", _png(grey)), 0)], (3, 4, 4), "u")
    np.testing.assert_array_equal(as_rgb[0], np.repeat(grey, 3, axis=2).transpose(2, 0, 1))
    as_grey = decode_batch([("c", ("png", _png(rgb)), 0)], (1, 4, 4), "u")
    want = np.asarray(Image.fromarray(rgb).convert("L"))  # ITU-R 601-2 luma, as PIL computes it
    np.testing.assert_array_equal(as_grey[0, 0], want)


def test_decode_batch_raises_or_records_bad_samples():
    good = _img(2, 2, 1)
    prior = Bad("s0.tar", "#4", "s0.tar: ends early")
    recs = [("a", _pnm(good), 0), ("b", ("png", b"junk"), 0), ("c", _pnm(_img(3, 3, 1)), 0), (None, prior, -1)]
    urls = ["s0.tar", "s1.tar", "s2.tar", "s0.tar"]
    with pytest.raises(UserError, match="^s1.tar: sample b: cannot decode png"):
        decode_batch(recs, (1, 2, 2), "x", urls=urls)
    bad: list = []
    out = decode_batch(recs, (1, 2, 2), "x", bad, urls)
    np.testing.assert_array_equal(out[0, 0], good[:, :, 0])
    assert not out[1:].any()  # placeholders are zeros
    assert [i for i, _ in bad] == [1, 2, 3]
    assert bad[0][1].url == "s1.tar" and bad[0][1].ident == "b" and "cannot decode png" in bad[0][1].msg
    assert bad[1][1].msg == "s2.tar: sample c is 3x3, expected 2x2"
    assert bad[2][1] is prior


@pytest.mark.parametrize("w, h, shape", [(2, 8, (1, 4, 4)), (8, 2, (1, 4, 4)), (4, 12, (3, 4, 4))])
def test_decode_batch_refuses_an_image_of_other_dimensions_and_the_same_size(w, h, shape):
    """The raw fast path takes only the exact header prep writes for this shape; an image of
    other dimensions with as many bytes is refused, as decode_image and `prep verify` do."""
    ext, data = _pnm(_img(h, w, 1))
    with pytest.raises(UserError, match=f"is {w}x{h}, expected 4x4"):
        decode_batch([("k", (ext, data), 0)], shape, "u")


def test_assemble_batch_points_and_images():
    pts = [("u", ("0", np.array([1.5, -2.0], np.float32), 3)), ("u", ("1", np.array([0.0, 4.0], np.float32), 7))]
    x, y, keys = assemble_batch(pts, "points", (2,))
    assert x.dtype == np.float32 and x.tolist() == [[1.5, -2.0], [0.0, 4.0]] and y == [3, 7] and keys == ["0", "1"]
    broken = [*pts, ("v", (None, Bad("v", "#2", "v: broken"), -1))]
    with pytest.raises(UserError, match="^v: broken$"):
        assemble_batch(broken, "points", (2,))
    bad: list = []
    x, y, _ = assemble_batch(broken, "points", (2,), bad)
    assert [i for i, _ in bad] == [2] and x[2].tolist() == [0.0, 0.0] and y == [3, 7, -1]
    img = _img(2, 2, 1)
    x, y, keys = assemble_batch([("w", ("k", _pnm(img), 5))], "image", (1, 2, 2))
    np.testing.assert_array_equal(x[0, 0], img[:, :, 0])
    assert y == [5] and keys == ["k"]


# ------------------------------------------------------------------------------------------ to float


def test_to_float_maps_uint8_onto_minus_one_to_one():
    u = torch.arange(256, dtype=torch.uint8)
    f = to_float(u)
    assert f.dtype == torch.float32
    assert f[0].item() == -1.0 and f[255].item() == 1.0
    np.testing.assert_allclose(f.numpy(), np.arange(256) / 127.5 - 1, rtol=0, atol=2e-7)
    assert (f.diff() > 0).all()


def test_finish_item_converts_tallies_and_raises():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = torch.tensor([3])
    x, y2 = finish_item((u, y), as_uint8=False)
    assert x.dtype == torch.float32 and torch.equal(x, to_float(u)) and y2 is y
    same = (u, y)
    assert finish_item(same, as_uint8=True) is same
    pts = (torch.zeros(4, 2), y)
    assert finish_item(pts, as_uint8=False) is pts  # float data is left as it is
    log = CorruptLog()
    out = finish_item({"batch": (u, y), "corrupt": [("s.tar", "k1", "s.tar: bad"), ("s.tar", "k2", "s.tar: bad")]},
                      as_uint8=True, log=log)
    assert out[0] is u and log.count == 2
    assert finish_item({"batch": None, "corrupt": [("s.tar", "k3", "m")]}, as_uint8=False, log=log) is None
    assert log.count == 3
    with pytest.raises(UserError, match="^s.tar: sample k: cannot decode$"):
        finish_item(WorkerFailure("s.tar: sample k: cannot decode"), as_uint8=False)


def test_to_tensors():
    x = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2)[:, :, ::-1]  # not contiguous
    xt, yt, keys = to_tensors(x, [1, -1], ["a", "b"], with_keys=True)
    assert xt.dtype == torch.uint8 and yt.dtype == torch.int64 and yt.tolist() == [1, -1] and keys == ["a", "b"]
    np.testing.assert_array_equal(xt.numpy(), x)
    assert len(to_tensors(x, [1, -1], ["a", "b"], with_keys=False)) == 2
