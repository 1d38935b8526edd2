"""Streaming WebDataset shards for training and evaluation (issue 3; docs/design.md, 'Distribution and data').

    from dali_dist.data import TrainStream, eval_batches, describe
    stream = TrainStream("data/fmnist", batch_size=100, seed=0, rank=r, world_size=w, num_workers=2)
    for step, (x, y) in enumerate(stream.batches(start_batch=resumed_step)): ...
    for x, y, keys in eval_batches("data/fmnist", split="test", batch_size=500, rank=r, world_size=w): ...

``source`` is a shard directory made by ``dali-dist prep`` (with ``manifest.json``) or a shard
URL pattern: brace expansion (``dir/train/shard-{000000..000009}.tar``), local paths,
``file:``, ``pipe:`` and ``http(s)://`` URLs (opened with ``webdataset.gopen``). A literal
``{split}`` in a pattern is replaced by the split asked for.

How the data is divided (never through torch.distributed, never through
``accelerator.prepare``; docs/design.md, 'Per-rank shards'):

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

Corrupt data (``on_corrupt``, dali_dist/corrupt.py): "error" raises one line naming the file;
"skip" leaves bad shards out and replaces bad samples, keeping every rank's batch count. The
tar reader and the shard checks live in dali_dist/shard_reader.py.

Images come out as float32 ``(N, C, H, W)`` in ``[-1, 1]`` (``x = u8 / 127.5 - 1``), or uint8
with ``as_uint8=True`` (convert on the accelerator); the 2D grid as float32 ``(N, 2)``;
labels as int64 (``-1`` where the source has none).
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .corrupt import Bad, CorruptLog, check_policy
from .errors import UserError
from .manifest import MANIFEST_NAME, read_manifest
from .seeding import derive_seed
from .shard_reader import check_shard, image_member, is_local, iter_shard_samples, local_path, read_records, shard_part

__all__ = ["DatasetInfo", "TrainStream", "describe", "eval_batches", "decode_batch", "decode_image", "read_manifest"]

DEFAULT_SHUFFLE_BUFFER = 2000
_PNM = re.compile(rb"P([56])\s+(\d+)\s+(\d+)\s+(\d+)\s")


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
    shard_sha256: dict = field(default_factory=dict)
    """{split name: [sha256 or None, ...]} from the manifest, aligned with ``shards``."""
    shard_sizes: dict = field(default_factory=dict)
    """{split name: [bytes or None, ...]} from the manifest, aligned with ``shards``."""
    unreadable: list = field(default_factory=list)
    """[(shard URL, problem)] left out while counting a bare pattern (on_corrupt="skip")."""

    @property
    def shape(self) -> tuple:
        """Per-sample tensor shape: (C, H, W) or (2,)."""
        return (2,) if self.kind == "points" else (self.channels, self.resolution, self.resolution)


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
    shas = {s: [sh.get("sha256") for sh in v["shards"]] for s, v in m["splits"].items()}
    sizes = {s: [sh.get("size") for sh in v["shards"]] for s, v in m["splits"].items()}
    return DatasetInfo(
        dataset=m["dataset"], resolution=m.get("resolution"), channels=m.get("channels"),
        splits={s: v["count"] for s, v in m["splits"].items()}, encoding=m["encoding"], shards=shards,
        manifest_sha256=m["_sha256"], kind=m["kind"], shard_counts=counts,
        num_classes=m.get("num_classes"), root=str(root), shard_sha256=shas, shard_sizes=sizes,
    )


def describe(source, split: str = "train", on_corrupt: str = "error") -> DatasetInfo:
    """What ``source`` holds. A directory gives every split of its manifest; a URL pattern
    gives one split (named ``split``; ``{split}`` in the pattern is replaced by it).
    With ``on_corrupt="skip"``, shards of a pattern that are missing or cannot be counted are
    left out and listed in ``unreadable``."""
    src = os.fspath(source)
    p = Path(local_path(src))
    if is_local(src) and (p.is_dir() or p.name == MANIFEST_NAME):
        return _from_manifest(p.parent if p.name == MANIFEST_NAME else p)
    urls = _expand(src.replace("{split}", split))
    if not urls:
        raise UserError(f"{src}: the pattern expands to no shards")
    unreadable: list = []

    def drop(u: str, msg: str) -> None:
        if on_corrupt != "skip":
            raise UserError(msg)
        unreadable.append((u, msg))

    # A local pattern over shards that a manifest describes (DIR/<split>/shard-*.tar) borrows
    # the manifest's counts and shape, so no counting pass is needed.
    if all(is_local(u) for u in urls):
        for u in list(urls):
            if not Path(local_path(u)).is_file():
                drop(u, f"{u}: no such shard")
                urls.remove(u)
        if not urls:
            raise UserError(f"{src}: none of the shards exists")
        root = Path(local_path(urls[0])).resolve().parent.parent
        if (root / MANIFEST_NAME).is_file():
            info = _from_manifest(root)
            known = {str(Path(u).resolve()): (c, h, z) for s in info.shards for u, c, h, z in
                     zip(info.shards[s], info.shard_counts[s], info.shard_sha256[s], info.shard_sizes[s])}
            hits = [known.get(str(Path(local_path(u)).resolve())) for u in urls]
            if all(hits):
                counts = [c for c, _, _ in hits]
                return DatasetInfo(
                    dataset=info.dataset, resolution=info.resolution, channels=info.channels,
                    splits={split: sum(counts)}, encoding=info.encoding, shards={split: urls},
                    manifest_sha256=info.manifest_sha256, kind=info.kind, shard_counts={split: counts},
                    num_classes=info.num_classes, root=info.root, shard_sha256={split: [h for _, h, _ in hits]},
                    shard_sizes={split: [z for _, _, z in hits]}, unreadable=unreadable,
                )
    # A bare pattern: look at the first readable sample for the shape, count every shard once.
    probed = None
    for u in list(urls):
        try:
            probed = _probe(u)
            break
        except UserError as exc:
            drop(u, str(exc))
            urls.remove(u)
    if probed is None:
        raise UserError(f"{src}: no shard of the pattern is readable")
    kind, encoding, res, ch = probed
    print(f"dali-dist data: {src}: no manifest, counting samples in {len(urls)} shard(s)", file=sys.stderr)
    counts = []
    for u in list(urls):
        try:
            counts.append(sum(1 for _ in read_records(u, kind, lenient=on_corrupt == "skip")))
        except UserError as exc:
            drop(u, str(exc))
            urls.remove(u)
    return DatasetInfo(
        dataset="unknown", resolution=res, channels=ch, splits={split: sum(counts)}, encoding=encoding,
        shards={split: urls}, manifest_sha256=None, kind=kind, shard_counts={split: counts},
        unreadable=unreadable,
    )


def _probe(url: str) -> tuple[str, str, Optional[int], Optional[int]]:
    """(kind, encoding, resolution, channels) from the first sample of a shard."""
    for s in iter_shard_samples(url):
        if "xy.npy" in s:
            return "points", "npy", None, None
        ext, data = image_member(s, url)
        arr = decode_image(ext, data, url, s["__key__"])
        h, w, c = arr.shape
        if h != w:
            raise UserError(f"{url}: images must be square, sample {s['__key__']} is {w}x{h}")
        return "image", ("raw" if ext in ("ppm", "pgm", "pnm") else ext), h, c
    raise UserError(f"{url}: shard holds no samples")


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


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
    for i, (key, payload, _) in enumerate(recs):
        where = urls[i] if urls else url
        try:
            if isinstance(payload, Bad):
                raise UserError(payload.msg)
            ext, data = payload
            if ext in ("ppm", "pgm") and len(data) >= need:
                hdr = len(data) - need  # our writer's header is everything before the pixels
                if data[hdr - 4: hdr] == b"255\n" or data[hdr - 4: hdr] == b"255 ":
                    out[i] = np.frombuffer(data, np.uint8, count=need, offset=hdr).reshape(h, w, c)
                    continue
            arr = decode_image(ext, data, where, key, expect=(h, w))
            if arr.shape[2] != c:
                arr = np.repeat(arr, 3, axis=2) if c == 3 and arr.shape[2] == 1 else np.asarray(_to_grey(arr))
            out[i] = arr
        except UserError as exc:
            if bad is None:
                raise
            bad.append((i, payload if isinstance(payload, Bad) else Bad(where, str(key), str(exc))))
    return out.transpose(0, 3, 1, 2)


def _to_grey(arr: np.ndarray):
    from PIL import Image

    return np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]


def _assemble(batch: list, kind: str, shape: tuple, bad: Optional[list] = None):
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


def _tensors(x: np.ndarray, y: list, keys: list, with_keys: bool):
    # Images stay uint8 here: workers hand batches to the main process through shared memory,
    # and float32 is 4x the bytes (measured: that copy, not decoding, limits the rate).
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.tensor(y, dtype=torch.int64)
    return (xt, yt, keys) if with_keys else (xt, yt)


def _finish(item, as_uint8: bool, log: Optional[CorruptLog] = None):
    """In the main process: raise a worker's error, tally skipped corrupt samples, convert
    images to float. Returns None for a batch that held nothing usable (evaluation only)."""
    if isinstance(item, _Failure):
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


# --------------------------------------------------------------------------------------------
# Dividing the split
# --------------------------------------------------------------------------------------------


def _region(n: int, parts: int, i: int) -> tuple[int, int]:
    return i * n // parts, (i + 1) * n // parts


def _read_range(shards: list, start: int, stop: int, kind: str, lenient: bool = False):
    """Records ``[start, stop)`` of the concatenation of ``shards`` [(url, count, sha256), ...],
    as (url, record); with ``lenient``, unreadable positions come as ``Bad`` records."""
    pos = 0
    for url, count, sha in shards:
        lo, hi = max(start, pos), min(stop, pos + count)
        if lo < hi:
            yield from ((url, r) for r in shard_part(url, kind, count, sha, lo - pos, hi - lo, lenient))
        pos += count
        if pos >= stop:
            return


def _check_has_samples(info: DatasetInfo, split: str, source) -> None:
    """An empty split (prep writes one when every input of it was corrupt) stops here, naming
    the manifest: later it would be an empty shard list, a zero division or an endless wait."""
    if info.splits[split] <= 0:
        where = Path(info.root) / MANIFEST_NAME if info.root else source
        raise UserError(f"{where}: split {split!r} has no samples")


def _usable_shards(info: DatasetInfo, split: str, on_corrupt: str, log: CorruptLog) -> list:
    """[(url, count, sha256)] of the split, checked before any batch is read. "error": a
    missing or wrongly sized local shard stops here, before other ranks wait on this one.
    "skip": sizes, sha256 and sample counts are checked and bad shards are left out; every
    rank reads the same files, so every rank leaves out the same ones."""
    urls, counts = info.shards[split], info.shard_counts[split]
    shas = info.shard_sha256.get(split) or [None] * len(urls)
    sizes = info.shard_sizes.get(split) or [None] * len(urls)
    for url, problem in info.unreadable:
        log.add(url, "*", problem)  # a shard that could not even be counted: counted as 1
    out = []
    for url, count, sha, size in zip(urls, counts, shas, sizes):
        if is_local(url) and (sha is not None or size is not None):
            problem = check_shard(url, info.kind, count, sha, size, full=on_corrupt == "skip")
            if problem:
                if on_corrupt != "skip":
                    raise UserError(problem)
                log.add(url, "*", problem, count)
                continue
        out.append((url, count, sha))
    if not out:
        raise UserError(f"split {split!r}: every shard is missing or corrupt (first: {info.shards[split][0]})")
    return out


def _refill_pool(shards: list, lo: int, hi: int, kind: str, shape: tuple, size: int, where: str) -> list:
    """The first ``size`` valid samples of ``[lo, hi)`` as (x, label, key): what stands in for
    corrupt samples (a pure function of the data, so resumed runs refill identically)."""
    pool = []
    for url, rec in _read_range(shards, lo, hi, kind, lenient=True):
        bad: list = []
        x, y, k = _assemble([(url, rec)], kind, shape, bad)
        if not bad:
            pool.append((x[0].copy(), y[0], k[0]))
            if len(pool) >= size:
                break
    if not pool:
        raise UserError(f"{where}: no readable sample in this rank's part of the split (all corrupt)")
    return pool


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
    # A scheduler's stop signal goes to every process of the job (Slurm signals the whole step);
    # the main process acts on it and shuts its workers down itself. A worker that died of it
    # first would end training with "DataLoader worker killed" instead of a checkpoint.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


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
        n = sum(c for _, c, _ in shards)
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
        lenient = s["on_corrupt"] == "skip"

        def passes():  # each pass over the range is shuffled and drained on its own
            while True:
                src = _read_range(shards, lo, hi, s["kind"], lenient)
                yield from (_shuffled(src, buffer, rng) if buffer > 1 else src)

        recs = passes()
        pool = None
        for i in range(quota):
            batch = [next(recs) for _ in range(b)]
            if i < skip:
                continue
            bad: Optional[list] = [] if lenient else None
            x, y, keys = _assemble(batch, s["kind"], s["shape"], bad)
            if not bad:
                yield _tensors(x, y, keys, s["with_keys"])
                continue
            # Corrupt samples are replaced in place (never dropped: every rank must yield the
            # same number of full batches) by valid ones of this rank's region, from the seed.
            if pool is None:
                pool = _refill_pool(shards, r0, r1, s["kind"], s["shape"], b, s["source"])
            fill = random.Random(derive_seed(s["seed"], "refill", epoch, s["rank"], nw, l, i))
            for j, _ in bad:
                x[j], y[j], keys[j] = pool[fill.randrange(len(pool))]
            yield {"batch": _tensors(x, y, keys, s["with_keys"]), "corrupt": [bd.report() for _, bd in bad]}

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
    ``(x, y, keys)``), ``pin_memory`` and ``prefetch_factor`` (passed to the DataLoader),
    ``on_corrupt`` ("error" or "skip": see dali_dist/corrupt.py).

    ``corrupt_skipped``: samples this rank has skipped so far (policy "skip"): every sample of
    a shard left out at the start, plus each corrupt sample met in the batches yielded by this
    object (counted once, in the main process; workers send their findings with the batches).
    """

    def __init__(self, source, *, split: str = "train", batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, batches_per_epoch: Optional[int] = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, as_uint8: bool = False,
                 pin_memory: bool = False, prefetch_factor: int = 4, with_keys: bool = False,
                 on_corrupt: str = "error"):
        if batch_size < 1:
            raise UserError(f"data: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"data: rank {rank} is not in [0, {world_size})")
        if num_workers < 0:
            raise UserError(f"data: num_workers must be >= 0, got {num_workers}")
        self.on_corrupt = check_policy(on_corrupt)
        self._log = CorruptLog()
        self.info = describe(source, split, on_corrupt)
        if split not in self.info.splits:
            raise UserError(f"{source}: no split {split!r} (has {', '.join(sorted(self.info.splits))})")
        _check_has_samples(self.info, split, source)
        # the count before corrupt shards are left out: every rank agrees on it, whatever it finds
        n = self.info.splits[split]
        shards = _usable_shards(self.info, split, on_corrupt, self._log)
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
            source=str(source), split=split, shards=shards,
            kind=self.info.kind, shape=self.info.shape, batch_size=batch_size, seed=seed, rank=rank,
            world_size=world_size, nw=max(1, num_workers), bpe=batches_per_epoch, shuffle_buffer=shuffle_buffer,
            as_uint8=as_uint8, with_keys=with_keys, on_corrupt=on_corrupt,
        )

    @property
    def corrupt_skipped(self) -> int:
        return self._log.count

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
            yield _finish(item, self.as_uint8, self._log)


class _EvalDataset(torch.utils.data.IterableDataset):
    def __init__(self, spec: dict):
        self.s = spec

    def _out(self, batch: list):
        s = self.s
        bad: Optional[list] = [] if s["on_corrupt"] == "skip" else None
        x, y, keys = _assemble(batch, s["kind"], s["shape"], bad)
        if not bad:
            return _tensors(x, y, keys, True)
        drop = {j for j, _ in bad}
        keep = [j for j in range(len(batch)) if j not in drop]
        item = _tensors(x[keep], [y[j] for j in keep], [keys[j] for j in keep], True) if keep else None
        return {"batch": item, "corrupt": [bd.report() for _, bd in bad]}

    def __iter__(self):
        s = self.s
        try:
            n = sum(c for _, c, _ in s["shards"])
            r0, r1 = _region(n, s["world_size"], s["rank"])
            w = _worker_id()
            lo = r0 + (r1 - r0) * w // s["nw"]
            hi = r0 + (r1 - r0) * (w + 1) // s["nw"]
            batch: list = []
            for url, rec in _read_range(s["shards"], lo, hi, s["kind"], s["on_corrupt"] == "skip"):
                batch.append((url, rec))
                if len(batch) == s["batch_size"]:
                    yield self._out(batch)
                    batch = []
            if batch:
                yield self._out(batch)
        except UserError as exc:
            yield _Failure(str(exc))


def eval_batches(source, *, split: str = "test", batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, as_uint8: bool = False, on_corrupt: str = "error"):
    """One deterministic pass over ``split``: yields (x, y, keys). Ranks x workers read disjoint
    consecutive ranges that together cover the split exactly once. With ``on_corrupt="skip"``
    corrupt shards and samples are left out (batches may be short; a warning per bad file and
    a closing count on stderr)."""
    if batch_size < 1:
        raise UserError(f"data: batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"data: rank {rank} is not in [0, {world_size})")
    check_policy(on_corrupt)
    log = CorruptLog()
    info = describe(source, split, on_corrupt)
    if split not in info.splits:
        raise UserError(f"{source}: no split {split!r} (has {', '.join(sorted(info.splits))})")
    _check_has_samples(info, split, source)
    spec = dict(shards=_usable_shards(info, split, on_corrupt, log), kind=info.kind, shape=info.shape,
                batch_size=batch_size, rank=rank, world_size=world_size, nw=max(1, num_workers), as_uint8=as_uint8,
                on_corrupt=on_corrupt)
    ds = _EvalDataset(spec)
    if num_workers == 0:
        it = iter(ds)
    else:
        it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init))
    for item in it:
        out = _finish(item, as_uint8, log)
        if out is not None:
            yield out
    if log.count:
        print(f"warning: {source}: split {split!r}: skipped {log.count} corrupt sample(s)", file=sys.stderr)
