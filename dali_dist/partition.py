"""Dividing a split between ranks and workers: contiguous sample regions, reading a region
across shards, the usable shards under the corrupt-data policy, refill pools and the seeded
shuffle buffer."""

from __future__ import annotations

import random
from pathlib import Path

from .corrupt import CorruptLog
from .data_sources import DatasetInfo
from .decode import assemble_batch
from .errors import UserError
from .manifest import MANIFEST_NAME
from .shard_reader import check_shard, is_local, shard_part


def region(n: int, parts: int, i: int) -> tuple[int, int]:
    return i * n // parts, (i + 1) * n // parts


def read_range(shards: list, start: int, stop: int, kind: str, lenient: bool = False):
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


def check_has_samples(info: DatasetInfo, split: str, source) -> None:
    """An empty split (prep writes one when every input of it was corrupt) stops here, naming
    the manifest: later it would be an empty shard list, a zero division or an endless wait."""
    if info.splits[split] <= 0:
        where = Path(info.root) / MANIFEST_NAME if info.root else source
        raise UserError(f"{where}: split {split!r} has no samples")


def usable_shards(info: DatasetInfo, split: str, on_corrupt: str, log: CorruptLog) -> list:
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


def refill_pool(shards: list, lo: int, hi: int, kind: str, shape: tuple, size: int, where: str) -> list:
    """The first ``size`` valid samples of ``[lo, hi)`` as (x, label, key): what stands in for
    corrupt samples (a pure function of the data, so resumed runs refill identically)."""
    pool = []
    for url, rec in read_range(shards, lo, hi, kind, lenient=True):
        bad: list = []
        x, y, k = assemble_batch([(url, rec)], kind, shape, bad)
        if not bad:
            pool.append((x[0].copy(), y[0], k[0]))
            if len(pool) >= size:
                break
    if not pool:
        raise UserError(f"{where}: no readable sample in this rank's part of the split (all corrupt)")
    return pool


def shuffled(src, buffer: int, rng: random.Random):
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
