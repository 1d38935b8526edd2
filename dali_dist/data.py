"""Streaming WebDataset shards for training and evaluation (issue 3; DESIGN.md sections 3, 3b).

    from dali_dist.data import TrainStream, eval_batches, describe
    stream = TrainStream("data/fmnist", batch_size=100, seed=0, rank=r, world_size=w, num_workers=2)
    for step, (x, y) in enumerate(stream.batches(start_batch=resumed_step)): ...
    for x, y, keys in eval_batches("data/fmnist", split="test", batch_size=500, rank=r, world_size=w): ...

``source`` is a shard directory made by ``dali-dist prep`` (with ``manifest.json``) or a shard
URL pattern: brace expansion (``dir/train/shard-{000000..000009}.tar``), local paths,
``file:``, ``pipe:`` and ``http(s)://`` URLs (opened with ``webdataset.gopen``). A literal
``{split}`` in a pattern is replaced by the split asked for.

How the data is divided (never through torch.distributed, never through
``accelerator.prepare``; DESIGN.md section 3):

* Every shard's sample count is known (from the manifest; for a bare pattern without one,
  from a counting pass over the shards). The split is one virtual sequence: for epoch ``e``
  the shards are permuted by ``(seed, e)``, identically on every rank.
* Rank ``r`` of ``W`` owns the contiguous region ``[r*N//W, (r+1)*N//W)`` of that sequence, so
  ranks are disjoint and any number of shards (even fewer shards than ranks) divides evenly.
  Each rank yields exactly ``batches_per_epoch`` batches per epoch (default
  ``N // (batch_size * W)``): uneven shard counts cannot hang DDP.
* Within a rank, batch ``j`` of an epoch comes from logical stream ``j % num_workers``; each
  stream reads its own sub-range of the region (reading only the shards it overlaps, seeking
  past the samples before its start), shuffles it with a buffer seeded by
  ``(seed, epoch, rank, stream)``, decodes and collates in the worker process. Physical
  DataLoader workers are re-assigned to logical streams every epoch so that torch's
  round-robin order always matches the batch numbering, which lets one persistent
  DataLoader run across epochs and lets ``batches(start_batch=k)`` resume exactly: it skips
  (reads without decoding) only the batches of the current epoch before ``k``.
* The data order depends on ``num_workers`` (one shuffle stream per worker): resume with
  the same value to reproduce a run exactly.

Evaluation (``eval_batches``) reads the split in manifest order; rank ``r`` and worker ``w``
take consecutive, disjoint ranges that together cover the split exactly once (ranks may get
counts that differ by a few samples; the last batch of each worker may be short).

Images come out as float32 ``(N, C, H, W)`` in ``[-1, 1]`` (``x = u8 / 127.5 - 1``), or uint8
with ``as_uint8=True`` (convert on the accelerator); the 2D grid as float32 ``(N, 2)``;
labels as int64 (``-1`` where the source has none).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .errors import UserError
from .manifest import MANIFEST_NAME, read_manifest

__all__ = ["DatasetInfo", "TrainStream", "describe", "eval_batches", "read_manifest", "iter_shard_samples"]

DEFAULT_SHUFFLE_BUFFER = 2000
_BLOCK = 512
_PNM = re.compile(rb"P([56])\s+(\d+)\s+(\d+)\s+(\d+)\s")
_IMAGE_EXTS = ("ppm", "pgm", "pnm", "png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")


# --------------------------------------------------------------------------------------------
# What a source holds
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetInfo:
    dataset: str
    """Dataset family from the manifest ("mnist", "cifar10", ...); "unknown" for a bare pattern."""
    resolution: Optional[int]
    """Square image side in pixels; None for the 2D points."""
    channels: Optional[int]
    """1 or 3 for images; None for the 2D points."""
    splits: dict
    """{split name: number of samples}."""
    encoding: str
    """"png", "raw" (binary PGM/PPM) or "npy" (points)."""
    shards: dict
    """{split name: [shard URL, ...]} in manifest order."""
    manifest_sha256: Optional[str]
    """sha256 of manifest.json's bytes; None for a bare URL pattern without one."""
    kind: str = "image"
    """"image" or "points"."""
    shard_counts: dict = field(default_factory=dict)
    """{split name: [samples per shard, ...]}, aligned with ``shards``."""
    num_classes: Optional[int] = None
    """Number of label values, None when the source has no labels."""
    root: Optional[str] = None
    """The shard directory (where manifest.json lives), None for remote patterns."""

    @property
    def shape(self) -> tuple:
        """Per-sample tensor shape: (C, H, W) or (2,)."""
        return (2,) if self.kind == "points" else (self.channels, self.resolution, self.resolution)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _local_path(url: str) -> str:
    return url[5:] if url.startswith("file:") and not url.startswith("file://") else (
        url[7:] if url.startswith("file://") else url)


def _expand(pattern: str) -> list[str]:
    import braceexpand

    urls: list[str] = []
    for part in pattern.split("::"):  # webdataset's separator for several patterns
        urls.extend(braceexpand.braceexpand(part))
    return urls


def _from_manifest(root: Path) -> DatasetInfo:
    m = read_manifest(root)
    shards = {s: [str(root / sh["name"]) for sh in v["shards"]] for s, v in m["splits"].items()}
    counts = {s: [sh["count"] for sh in v["shards"]] for s, v in m["splits"].items()}
    return DatasetInfo(
        dataset=m["dataset"], resolution=m.get("resolution"), channels=m.get("channels"),
        splits={s: v["count"] for s, v in m["splits"].items()}, encoding=m["encoding"], shards=shards,
        manifest_sha256=m["_sha256"], kind=m["kind"], shard_counts=counts,
        num_classes=m.get("num_classes"), root=str(root),
    )


def describe(source, split: str = "train") -> DatasetInfo:
    """What ``source`` holds. A directory gives every split of its manifest; a URL pattern
    gives one split (named ``split``; ``{split}`` in the pattern is replaced by it)."""
    src = os.fspath(source)
    p = Path(_local_path(src))
    if _is_local(src) and (p.is_dir() or p.name == MANIFEST_NAME):
        return _from_manifest(p.parent if p.name == MANIFEST_NAME else p)
    urls = _expand(src.replace("{split}", split))
    if not urls:
        raise UserError(f"{src}: the pattern expands to no shards")
    # A local pattern over shards that a manifest describes (DIR/<split>/shard-*.tar) borrows
    # the manifest's counts and shape, so no counting pass is needed.
    if all(_is_local(u) for u in urls):
        for u in urls:
            if not Path(_local_path(u)).is_file():
                raise UserError(f"{u}: no such shard")
        root = Path(_local_path(urls[0])).resolve().parent.parent
        if (root / MANIFEST_NAME).is_file():
            info = _from_manifest(root)
            known = {str(Path(u).resolve()): (s, c) for s in info.shards for u, c in zip(info.shards[s], info.shard_counts[s])}
            hits = [known.get(str(Path(_local_path(u)).resolve())) for u in urls]
            if all(hits):
                counts = [c for _, c in hits]
                return DatasetInfo(
                    dataset=info.dataset, resolution=info.resolution, channels=info.channels,
                    splits={split: sum(counts)}, encoding=info.encoding, shards={split: urls},
                    manifest_sha256=info.manifest_sha256, kind=info.kind, shard_counts={split: counts},
                    num_classes=info.num_classes, root=info.root,
                )
    # A bare pattern: look at the first sample for the shape, count every shard once.
    kind, encoding, res, ch = _probe(urls[0])
    print(f"dali-dist data: {src}: no manifest, counting samples in {len(urls)} shard(s)", file=sys.stderr)
    counts = [sum(1 for _ in _records(u, kind)) for u in urls]
    return DatasetInfo(
        dataset="unknown", resolution=res, channels=ch, splits={split: sum(counts)}, encoding=encoding,
        shards={split: urls}, manifest_sha256=None, kind=kind, shard_counts={split: counts},
    )


# --------------------------------------------------------------------------------------------
# Reading tar shards (a small streaming ustar reader: several times faster than tarfile)
# --------------------------------------------------------------------------------------------


def _open(url: str):
    if _is_local(url):
        path = _local_path(url)
        try:
            return open(path, "rb", buffering=1 << 20)
        except OSError as exc:
            raise UserError(f"{path}: cannot open shard ({exc.strerror or exc})") from None
    import webdataset as wds

    try:
        return wds.gopen(url, "rb")
    except Exception as exc:  # gopen raises various types for bad URLs
        raise UserError(f"{url}: cannot open shard ({exc})") from None


def _octal(field_: bytes, url: str) -> int:
    s = field_.rstrip(b"\0 ").lstrip(b" ")
    if field_[:1] == b"\x80":  # GNU base-256 for large sizes
        return int.from_bytes(field_[1:], "big")
    try:
        return int(s, 8) if s else 0
    except ValueError:
        raise UserError(f"{url}: not a tar file (bad header field {field_[:12]!r})") from None


def _read_exact(f, n: int, url: str, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise UserError(f"{url}: truncated tar ({what})")
    return b


def _skip(f, n: int, seekable: bool, url: str, what: str) -> None:
    if n <= 0:
        return
    if seekable:
        f.seek(n, 1)
    else:
        while n > 0:
            b = f.read(min(n, 1 << 20))
            if not b:
                raise UserError(f"{url}: truncated tar ({what})")
            n -= len(b)


def _tar_members(f, url: str, want=None):
    """Yield (name, data) of regular files; ``data`` is None when ``want(name)`` says no (the
    data is then skipped, by seeking where the stream allows)."""
    try:
        seekable = f.seekable()
    except Exception:
        seekable = False
    long_name = None
    while True:
        hdr = f.read(_BLOCK)
        if not hdr:
            return  # EOF without the end blocks: accepted, as tarfile does
        if len(hdr) != _BLOCK:
            raise UserError(f"{url}: truncated tar (header)")
        if hdr.count(0) == _BLOCK:
            return  # end of archive
        if hdr[257:262] != b"ustar" and hdr[257:263] != b"ustar\0":
            # v7 tars have no magic; check the header checksum instead
            chk = _octal(hdr[148:156], url)
            if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise UserError(f"{url}: not a tar file (bad header checksum)")
        size = _octal(hdr[124:136], url)
        typ = hdr[156:157]
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if typ in (b"L", b"x"):  # GNU long name / pax extended header
            data = _read_exact(f, padded, url, "extended header")[:size]
            if typ == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "replace")
            else:
                for rec in data.split(b"\n"):
                    if b" path=" in rec:
                        long_name = rec.split(b" path=", 1)[1].decode("utf-8", "replace")
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = hdr[345:500].split(b"\0", 1)[0]
            if prefix and hdr[257:262] == b"ustar":
                name = prefix.decode("utf-8", "replace") + "/" + name
        if typ not in (b"0", b"\0", b"7"):
            _skip(f, padded, seekable, url, name)  # dirs, links, globals: not samples
            continue
        if want is not None and not want(name):
            _skip(f, padded, seekable, url, name)
            yield name, None
            continue
        data = _read_exact(f, padded, url, name)
        yield name, data[:size] if padded != size else data


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything up to the first dot of the file's basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def iter_shard_samples(url: str, skip_keys: int = 0, want_data: bool = True) -> Iterator[dict]:
    """WebDataset samples of one shard as dicts ``{"__key__": key, ext: bytes, ...}``.
    The first ``skip_keys`` samples are passed over without reading their data."""
    f = _open(url)
    try:
        state = {"n": 0, "key": None}

        def want(name: str) -> bool:
            key = _split_name(name)[0]
            if key != state["key"]:
                state["key"] = key
                state["n"] += 1
            return want_data and state["n"] > skip_keys

        cur: Optional[dict] = None
        for name, data in _tar_members(f, url, want):
            key, ext = _split_name(name)
            if cur is None or key != cur["__key__"]:
                if cur is not None and len(cur) > 1:
                    yield cur
                cur = {"__key__": key}
            if data is not None:
                cur[ext] = data
        if cur is not None and len(cur) > 1:
            yield cur
    finally:
        f.close()


def _label(sample: dict) -> int:
    v = sample.get("cls")
    if v is None:
        return -1
    try:
        return int(v)
    except ValueError:
        raise UserError(f"sample {sample['__key__']}: label {v[:20]!r} is not an integer") from None


def _image_member(sample: dict, url: str) -> tuple[str, bytes]:
    for ext in _IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise UserError(f"{url}: sample {sample['__key__']} has no image ({sorted(k for k in sample if k != '__key__')})")


def _records(url: str, kind: str, skip: int = 0, limit: Optional[int] = None):
    """Records (key, payload, label) of one shard: payload is (ext, bytes) for images, a
    float32 (2,) array for points. Skips ``skip`` records first, stops after ``limit``."""
    if limit is not None and limit <= 0:
        return
    n = 0
    if kind == "image":
        for s in iter_shard_samples(url, skip_keys=skip):
            yield s["__key__"], _image_member(s, url), _label(s)
            n += 1
            if limit is not None and n >= limit:
                return
        return
    for s in iter_shard_samples(url):
        xy, cl = _load_points(s, url)
        m = len(xy)
        if skip >= m:
            skip -= m
            continue
        key = s["__key__"]
        base = int(key.rsplit("/", 1)[-1]) if key.rsplit("/", 1)[-1].isdigit() else None
        for j in range(skip, m):
            k = f"{base + j:08d}" if base is not None else f"{key}_{j}"
            yield k, xy[j], int(cl[j])
            n += 1
            if limit is not None and n >= limit:
                return
        skip = 0


def _load_points(s: dict, url: str):
    try:
        xy = np.load(io.BytesIO(s["xy.npy"]), allow_pickle=False)
        cl = np.load(io.BytesIO(s["cls.npy"]), allow_pickle=False) if "cls.npy" in s else np.full(len(xy), -1)
    except KeyError:
        raise UserError(f"{url}: sample {s['__key__']} has no xy.npy") from None
    except ValueError as exc:
        raise UserError(f"{url}: sample {s['__key__']}: bad npy ({exc})") from None
    if xy.ndim != 2 or xy.shape[1] != 2 or len(cl) != len(xy):
        raise UserError(f"{url}: sample {s['__key__']}: points must be (n, 2) with n labels")
    return xy.astype(np.float32, copy=False), cl


def _probe(url: str) -> tuple[str, str, Optional[int], Optional[int]]:
    """(kind, encoding, resolution, channels) from the first sample of a shard."""
    for s in iter_shard_samples(url):
        if "xy.npy" in s:
            return "points", "npy", None, None
        ext, data = _image_member(s, url)
        arr = _decode_one(ext, data, url, s["__key__"])
        h, w, c = arr.shape
        if h != w:
            raise UserError(f"{url}: images must be square, sample {s['__key__']} is {w}x{h}")
        return "image", ("raw" if ext in ("ppm", "pgm", "pnm") else ext), h, c
    raise UserError(f"{url}: shard holds no samples")


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _decode_one(ext: str, data: bytes, url: str, key: str) -> np.ndarray:
    """One image as uint8 (H, W, C)."""
    if ext in ("ppm", "pgm", "pnm"):
        m = _PNM.match(data)
        if m is None or m.group(4) != b"255":
            raise UserError(f"{url}: sample {key}: not a binary 8-bit PGM/PPM")
        c = 3 if m.group(1) == b"6" else 1
        w, h = int(m.group(2)), int(m.group(3))
        try:
            return np.frombuffer(data, np.uint8, count=h * w * c, offset=m.end()).reshape(h, w, c)
        except ValueError:
            raise UserError(f"{url}: sample {key}: truncated PGM/PPM") from None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as exc:
        raise UserError(f"{url}: sample {key}: cannot decode {ext} ({exc})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_batch(recs: list, shape: tuple, url: str) -> np.ndarray:
    """uint8 (N, C, H, W) from image records; the fast path for PGM/PPM is one frombuffer each."""
    c, h, w = shape
    out = np.empty((len(recs), h, w, c), np.uint8)
    need = h * w * c
    for i, (key, (ext, data), _) in enumerate(recs):
        if ext in ("ppm", "pgm") and len(data) >= need:
            hdr = len(data) - need  # our writer's header is everything before the pixels
            if data[hdr - 4: hdr] == b"255\n" or data[hdr - 4: hdr] == b"255 ":
                out[i] = np.frombuffer(data, np.uint8, count=need, offset=hdr).reshape(h, w, c)
                continue
        arr = _decode_one(ext, data, url, key)
        if arr.shape != (h, w, c):
            if arr.shape[:2] == (h, w) and c == 3 and arr.shape[2] == 1:
                arr = np.repeat(arr, 3, axis=2)
            elif arr.shape[:2] == (h, w) and c == 1 and arr.shape[2] == 3:
                arr = np.asarray(_to_grey(arr))
            else:
                raise UserError(f"{url}: sample {key} is {arr.shape[1]}x{arr.shape[0]}x{arr.shape[2]}, expected {w}x{h}x{c}")
        out[i] = arr
    return out.transpose(0, 3, 1, 2)


def _to_grey(arr: np.ndarray):
    from PIL import Image

    return np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]


def _collate(recs: list, info_kind: str, shape: tuple, url: str, keys: bool):
    y = torch.tensor([r[2] for r in recs], dtype=torch.int64)
    if info_kind == "points":
        x = torch.from_numpy(np.stack([r[1] for r in recs]).astype(np.float32, copy=False))
    else:
        # Always uint8 here: workers hand batches to the main process through shared memory,
        # and float32 is 4x the bytes (measured: that copy, not decoding, limits the rate).
        x = torch.from_numpy(np.ascontiguousarray(_decode_batch(recs, shape, url)))
    return (x, y, [r[0] for r in recs]) if keys else (x, y)


def _finish(item, as_uint8: bool):
    """In the main process: raise a worker's error, or convert images to float."""
    if isinstance(item, _Failure):
        raise UserError(item.msg)
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


# --------------------------------------------------------------------------------------------
# Dividing the split
# --------------------------------------------------------------------------------------------


def derive_seed(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def _region(n: int, parts: int, i: int) -> tuple[int, int]:
    return i * n // parts, (i + 1) * n // parts


def _read_range(shards: list, start: int, stop: int, kind: str):
    """Records ``[start, stop)`` of the concatenation of ``shards`` [(url, count), ...]."""
    pos = 0
    for url, count in shards:
        lo, hi = max(start, pos), min(stop, pos + count)
        if lo < hi:
            yield from ((url, r) for r in _records(url, kind, skip=lo - pos, limit=hi - lo))
        pos += count
        if pos >= stop:
            return


def _shuffled(src, buffer: int, rng: random.Random):
    buf: list = []
    for item in src:
        if len(buf) < buffer:
            buf.append(item)
            continue
        i = rng.randrange(buffer)
        out, buf[i] = buf[i], item
        yield out
    rng.shuffle(buf)
    yield from buf


def _worker_id() -> int:
    wi = torch.utils.data.get_worker_info()
    return 0 if wi is None else wi.id


def _worker_init(_):
    torch.set_num_threads(1)


class _Failure:
    """A UserError raised in a worker, passed along as data so the main process can raise it
    as one line (torch would re-raise it with the worker's traceback in the message)."""

    def __init__(self, msg: str):
        self.msg = msg


class _TrainDataset(torch.utils.data.IterableDataset):
    def __init__(self, spec: dict, start_batch: int):
        self.s = spec
        self.start_batch = start_batch

    def __iter__(self):
        try:
            yield from self._iter()
        except UserError as exc:
            yield _Failure(str(exc))

    def logical_stream(self, epoch: int, l: int, skip: int):
        """Batches l, l+nw, ... of ``epoch`` for this rank, the first ``skip`` of them dropped
        without decoding."""
        s = self.s
        nw, bpe, b = s["nw"], s["bpe"], s["batch_size"]
        quota = len(range(l, bpe, nw))
        if quota <= skip:
            return
        perm = list(range(len(s["shards"])))
        random.Random(derive_seed(s["seed"], "shards", epoch)).shuffle(perm)
        shards = [s["shards"][i] for i in perm]
        n = sum(c for _, c in shards)
        r0, r1 = _region(n, s["world_size"], s["rank"])
        quotas = [len(range(i, bpe, nw)) for i in range(nw)]
        if bpe * b <= r1 - r0:  # the usual case: disjoint sub-ranges, nothing repeats in an epoch
            lo = r0 + b * sum(quotas[:l])
            hi = lo + b * quota
        else:  # batches_per_epoch asked for more than the region holds: cycle over a share
            lo, hi = r0 + (r1 - r0) * sum(quotas[:l]) // (bpe or 1), r0 + (r1 - r0) * sum(quotas[: l + 1]) // (bpe or 1)
        if hi <= lo:
            raise UserError(f"{s['source']}: split {s['split']!r} has too few samples ({n}) for "
                            f"{s['world_size']} rank(s) x {nw} worker(s)")
        rng = random.Random(derive_seed(s["seed"], "shuffle", epoch, s["rank"], nw, l))

        buffer = min(s["shuffle_buffer"], hi - lo)

        def passes():  # each pass over the range is shuffled and drained on its own
            while True:
                src = _read_range(shards, lo, hi, s["kind"])
                yield from (_shuffled(src, buffer, rng) if buffer > 1 else src)

        recs = passes()
        for i in range(quota):
            batch = [next(recs) for _ in range(b)]
            if i < skip:
                continue
            yield _collate([r for _, r in batch], s["kind"], s["shape"], batch[0][0], s["with_keys"])

    def _iter(self):
        s = self.s
        nw, bpe, k0 = s["nw"], s["bpe"], self.start_batch
        p = _worker_id()
        epoch = k0 // bpe
        while True:
            # This worker serves the rank's batches t = k0 + p, k0 + p + nw, ...; in this epoch
            # those are exactly the batches of logical stream l.
            l = (k0 + p - epoch * bpe) % nw
            first = max(0, k0 - epoch * bpe)
            skip = len(range(l, first, nw))
            yield from self.logical_stream(epoch, l, skip)
            epoch += 1


class TrainStream:
    """Endless training batches for one rank; see the module docstring for the guarantees.

    batch_size is per rank. ``batches_per_epoch`` defaults to ``N // (batch_size * world_size)``,
    the same on every rank. ``batches(start_batch=k)`` yields what an uninterrupted stream
    yields from its k-th batch on (k counts this rank's batches since the start of training).

    Options: ``shuffle_buffer`` (samples held per worker for shuffling), ``as_uint8`` (yield
    uint8 images; convert with ``to_float`` on the device), ``with_keys`` (yield
    ``(x, y, keys)``), ``pin_memory`` and ``prefetch_factor`` (passed to the DataLoader).
    """

    def __init__(self, source, *, split: str = "train", batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, batches_per_epoch: Optional[int] = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, as_uint8: bool = False,
                 pin_memory: bool = False, prefetch_factor: int = 4, with_keys: bool = False):
        if batch_size < 1:
            raise UserError(f"data: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"data: rank {rank} is not in [0, {world_size})")
        if num_workers < 0:
            raise UserError(f"data: num_workers must be >= 0, got {num_workers}")
        self.info = describe(source, split)
        if split not in self.info.splits:
            raise UserError(f"{source}: no split {split!r} (has {', '.join(sorted(self.info.splits))})")
        n = self.info.splits[split]
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        if batches_per_epoch is None:
            batches_per_epoch = n // (batch_size * world_size)
            if batches_per_epoch < 1:
                raise UserError(f"{source}: split {split!r} has {n} samples, fewer than one batch of "
                                f"{batch_size} on each of {world_size} rank(s)")
        elif batches_per_epoch < 1:
            raise UserError(f"data: batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.batches_per_epoch = batches_per_epoch
        self.as_uint8, self.pin_memory, self.prefetch_factor = as_uint8, pin_memory, prefetch_factor
        self._spec = dict(
            source=str(source), split=split, shards=list(zip(self.info.shards[split], self.info.shard_counts[split])),
            kind=self.info.kind, shape=self.info.shape, batch_size=batch_size, seed=seed, rank=rank,
            world_size=world_size, nw=max(1, num_workers), bpe=batches_per_epoch, shuffle_buffer=shuffle_buffer,
            as_uint8=as_uint8, with_keys=with_keys,
        )

    def epoch_of(self, batch_index: int) -> int:
        return batch_index // self.batches_per_epoch

    def batches(self, start_batch: int = 0):
        if start_batch < 0:
            raise UserError(f"data: start_batch must be >= 0, got {start_batch}")
        ds = _TrainDataset(self._spec, start_batch)
        if self.num_workers == 0:
            it = iter(ds)
        else:
            it = iter(torch.utils.data.DataLoader(
                ds, batch_size=None, num_workers=self.num_workers, worker_init_fn=_worker_init,
                pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor, persistent_workers=False))
        for item in it:
            yield _finish(item, self.as_uint8)


class _EvalDataset(torch.utils.data.IterableDataset):
    def __init__(self, spec: dict):
        self.s = spec

    def __iter__(self):
        s = self.s
        try:
            n = sum(c for _, c in s["shards"])
            r0, r1 = _region(n, s["world_size"], s["rank"])
            w = _worker_id()
            lo = r0 + (r1 - r0) * w // s["nw"]
            hi = r0 + (r1 - r0) * (w + 1) // s["nw"]
            batch: list = []
            for url, rec in _read_range(s["shards"], lo, hi, s["kind"]):
                batch.append(rec)
                if len(batch) == s["batch_size"]:
                    yield _collate(batch, s["kind"], s["shape"], url, True)
                    batch = []
            if batch:
                yield _collate(batch, s["kind"], s["shape"], url, True)
        except UserError as exc:
            yield _Failure(str(exc))


def eval_batches(source, *, split: str = "test", batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, as_uint8: bool = False):
    """One deterministic pass over ``split``: yields (x, y, keys). Ranks x workers read disjoint
    consecutive ranges that together cover the split exactly once."""
    if batch_size < 1:
        raise UserError(f"data: batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"data: rank {rank} is not in [0, {world_size})")
    info = describe(source, split)
    if split not in info.splits:
        raise UserError(f"{source}: no split {split!r} (has {', '.join(sorted(info.splits))})")
    spec = dict(shards=list(zip(info.shards[split], info.shard_counts[split])), kind=info.kind, shape=info.shape,
                batch_size=batch_size, rank=rank, world_size=world_size, nw=max(1, num_workers), as_uint8=as_uint8)
    ds = _EvalDataset(spec)
    if num_workers == 0:
        it = iter(ds)
    else:
        it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init))
    for item in it:
        yield _finish(item, as_uint8)
