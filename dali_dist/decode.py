"""Shard samples to arrays and tensors: one image (PNG, JPEG, binary PGM/PPM) to uint8, a batch
of records to one array (a placeholder for a bad sample), and uint8 to float in [-1, 1]."""

from __future__ import annotations

import io
import re
from typing import Optional

import numpy as np
import torch

from .corrupt import Bad, CorruptLog
from .errors import UserError

_PNM = re.compile(rb"P([56])\s+(\d+)\s+(\d+)\s+(\d+)\s")


def decode_image(ext: str, data: bytes, url: str, key: str, expect: Optional[tuple] = None) -> np.ndarray:
    """One image as uint8 (H, W, C). ``expect`` (h, w): refuse other sizes before decoding, so
    a header claiming absurd dimensions never allocates them."""
    if ext in ("ppm", "pgm", "pnm"):
        m = _PNM.match(data)
        if m is None or m.group(4) != b"255":
            raise UserError(f"{url}: sample {key}: not a binary 8-bit PGM/PPM")
        c = 3 if m.group(1) == b"6" else 1
        w, h = int(m.group(2)), int(m.group(3))
        if expect is not None and (h, w) != tuple(expect):
            raise UserError(f"{url}: sample {key} is {w}x{h}, expected {expect[1]}x{expect[0]}")
        try:
            return np.frombuffer(data, np.uint8, count=h * w * c, offset=m.end()).reshape(h, w, c)
        except ValueError:
            raise UserError(f"{url}: sample {key}: truncated PGM/PPM") from None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if expect is not None and (im.height, im.width) != tuple(expect):
                raise UserError(f"{url}: sample {key} is {im.width}x{im.height}, expected {expect[1]}x{expect[0]}")
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except UserError:
        raise
    except Exception as exc:
        why = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", str(exc))  # no object addresses in messages
        raise UserError(f"{url}: sample {key}: cannot decode {ext} ({type(exc).__name__}: {why})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_batch(recs: list, shape: tuple, url: str, bad: Optional[list] = None, urls: Optional[list] = None) -> np.ndarray:
    """uint8 (N, C, H, W) from image records; the fast path for PGM/PPM is one frombuffer each.
    With ``bad`` (a list), failures are appended as (index, Bad) and leave zeros; else raised.
    ``urls``: the shard of each record, for messages (default: ``url``)."""
    c, h, w = shape
    out = np.zeros((len(recs), h, w, c), np.uint8)
    need = h * w * c
    # the exact header prep's raw writer emits for this shape: anything else (other
    # dimensions with as many bytes, comments, other maxval) goes through the full decoder
    header = (b"P6" if c == 3 else b"P5") + b"\n%d %d\n255\n" % (w, h)
    fast_ext = "ppm" if c == 3 else "pgm"
    for i, (key, payload, _) in enumerate(recs):
        where = urls[i] if urls else url
        try:
            if isinstance(payload, Bad):
                raise UserError(payload.msg)
            ext, data = payload
            if ext == fast_ext and len(data) == len(header) + need and data.startswith(header):
                out[i] = np.frombuffer(data, np.uint8, count=need, offset=len(header)).reshape(h, w, c)
                continue
            arr = decode_image(ext, data, where, key, expect=(h, w))
            if arr.shape[2] != c:
                arr = np.repeat(arr, 3, axis=2) if c == 3 and arr.shape[2] == 1 else np.asarray(to_grey(arr))
            out[i] = arr
        except UserError as exc:
            if bad is None:
                raise
            bad.append((i, payload if isinstance(payload, Bad) else Bad(where, str(key), str(exc))))
    return out.transpose(0, 3, 1, 2)


def to_grey(arr: np.ndarray):
    from PIL import Image

    return np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]


def assemble_batch(batch: list, kind: str, shape: tuple, bad: Optional[list] = None):
    """Records [(url, (key, payload, label)), ...] -> (x uint8 (N, C, H, W) or float32 (N, 2)
    ndarray, labels, keys). Bad records: appended to ``bad`` as (index, Bad), or raised."""
    recs = [r for _, r in batch]
    if kind == "points":
        x = np.zeros((len(recs), 2), np.float32)
        for i, (_, payload, _) in enumerate(recs):
            if isinstance(payload, Bad):
                if bad is None:
                    raise UserError(payload.msg)
                bad.append((i, payload))
            else:
                x[i] = payload
    else:
        x = decode_batch(recs, shape, batch[0][0], bad, [u for u, _ in batch])
    return x, [r[2] for r in recs], [r[0] for r in recs]


def to_tensors(x: np.ndarray, y: list, keys: list, with_keys: bool):
    # Images stay uint8 here: workers hand batches to the main process through shared memory,
    # and float32 is 4x the bytes (measured: that copy, not decoding, limits the rate).
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.tensor(y, dtype=torch.int64)
    return (xt, yt, keys) if with_keys else (xt, yt)


def finish_item(item, as_uint8: bool, log: Optional[CorruptLog] = None):
    """In the main process: raise a worker's error, tally skipped corrupt samples, convert
    images to float. Returns None for a batch that held nothing usable (evaluation only)."""
    if isinstance(item, WorkerFailure):
        raise UserError(item.msg)
    if isinstance(item, dict):  # a batch with corrupt samples skipped: {"batch", "corrupt"}
        if log is not None:
            log.add_reports(item["corrupt"])
        item = item["batch"]
        if item is None:
            return None
    x = item[0]
    if as_uint8 or x.dtype != torch.uint8:
        return item
    # numpy, single-threaded on purpose: torch's intra-op pool in a busy process can stall
    # for milliseconds on a small op.
    f = x.numpy().astype(np.float32)
    f *= np.float32(1 / 127.5)
    f -= np.float32(1.0)
    return (torch.from_numpy(f), *item[1:])


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (from ``as_uint8=True``) -> float32 in [-1, 1], on any device."""
    return x.float().mul_(1 / 127.5).sub_(1.0)


class WorkerFailure:
    """A UserError raised in a worker, passed along as data so the main process can raise it
    as one line (torch would re-raise it with the worker's traceback in the message)."""

    def __init__(self, msg: str):
        self.msg = msg
