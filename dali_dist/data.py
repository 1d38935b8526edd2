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
"skip" leaves bad shards out and replaces bad samples, keeping every rank's batch count.

The modules, one job each: data_sources.py (what a source holds: ``describe``), partition.py
(dividing a split between ranks and workers), decode.py (samples to arrays and tensors),
shard_reader.py (the tar reader and the shard checks), and this one (the two streams).

Images come out as float32 ``(N, C, H, W)`` in ``[-1, 1]`` (``x = u8 / 127.5 - 1``), or uint8
with ``as_uint8=True`` (convert on the accelerator); the 2D grid as float32 ``(N, 2)``;
labels as int64 (``-1`` where the source has none).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Optional

import torch

from .corrupt import CorruptLog, check_policy
from .data_sources import DatasetInfo, describe
from .decode import WorkerFailure, assemble_batch, decode_batch, decode_image, finish_item, to_float, to_tensors
from .errors import UserError
from .manifest import read_manifest
from .partition import check_has_samples, read_range, refill_pool, region, shuffled, usable_shards
from .seeding import derive_seed

__all__ = ["DatasetInfo", "TrainStream", "describe", "eval_batches", "decode_batch", "decode_image", "read_manifest",
           "to_float"]

DEFAULT_SHUFFLE_BUFFER = 2000


# --------------------------------------------------------------------------------------------
# Streams: training (endless, shuffled, resumable) and evaluation (one ordered pass)
# --------------------------------------------------------------------------------------------


def _worker_id() -> int:
    wi = torch.utils.data.get_worker_info()
    return 0 if wi is None else wi.id


def _worker_init(_):
    torch.set_num_threads(1)
    _end_only_on_the_parents_signal()


def _end_only_on_the_parents_signal() -> None:
    """A scheduler's stop signal goes to every process of the job (Slurm signals the whole
    step): the main process acts on it, checkpoints and shuts its workers down itself, and a
    worker that died of it first would end the run with "DataLoader worker killed" (or a hang)
    instead of a checkpoint. So a worker ignores SIGUSR1, and SIGTERM unless its parent sent it
    (torch and multiprocessing end workers that way): a thread waits for SIGTERM, blocked in
    every other thread, and reads who sent it."""
    import threading

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not POSIX: keep the default
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    parent = os.getppid()

    def wait_for_term() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent or os.getppid() != parent:  # the owner, or orphaned
                os._exit(0)

    threading.Thread(target=wait_for_term, name="sigterm-from-parent", daemon=True).start()


class _TrainDataset(torch.utils.data.IterableDataset):
    def __init__(self, spec: dict, start_batch: int):
        self.s = spec
        self.start_batch = start_batch

    def __iter__(self):
        try:
            yield from self._iter()
        except UserError as exc:
            yield WorkerFailure(str(exc))

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
        r0, r1 = region(n, s["world_size"], s["rank"])
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
                src = read_range(shards, lo, hi, s["kind"], lenient)
                yield from (shuffled(src, buffer, rng) if buffer > 1 else src)

        recs = passes()
        pool = None
        for i in range(quota):
            batch = [next(recs) for _ in range(b)]
            if i < skip:
                continue
            bad: Optional[list] = [] if lenient else None
            x, y, keys = assemble_batch(batch, s["kind"], s["shape"], bad)
            if not bad:
                yield to_tensors(x, y, keys, s["with_keys"])
                continue
            # Corrupt samples are replaced in place (never dropped: every rank must yield the
            # same number of full batches) by valid ones of this rank's region, from the seed.
            if pool is None:
                pool = refill_pool(shards, r0, r1, s["kind"], s["shape"], b, s["source"])
            fill = random.Random(derive_seed(s["seed"], "refill", epoch, s["rank"], nw, l, i))
            for j, _ in bad:
                x[j], y[j], keys[j] = pool[fill.randrange(len(pool))]
            yield {"batch": to_tensors(x, y, keys, s["with_keys"]), "corrupt": [bd.report() for _, bd in bad]}

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
        check_has_samples(self.info, split, source)
        # the count before corrupt shards are left out: every rank agrees on it, whatever it finds
        n = self.info.splits[split]
        shards = usable_shards(self.info, split, on_corrupt, self._log)
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
            yield finish_item(item, self.as_uint8, self._log)


class _EvalDataset(torch.utils.data.IterableDataset):
    def __init__(self, spec: dict):
        self.s = spec

    def _out(self, batch: list):
        s = self.s
        bad: Optional[list] = [] if s["on_corrupt"] == "skip" else None
        x, y, keys = assemble_batch(batch, s["kind"], s["shape"], bad)
        if not bad:
            return to_tensors(x, y, keys, True)
        drop = {j for j, _ in bad}
        keep = [j for j in range(len(batch)) if j not in drop]
        item = to_tensors(x[keep], [y[j] for j in keep], [keys[j] for j in keep], True) if keep else None
        return {"batch": item, "corrupt": [bd.report() for _, bd in bad]}

    def __iter__(self):
        s = self.s
        try:
            n = sum(c for _, c, _ in s["shards"])
            r0, r1 = region(n, s["world_size"], s["rank"])
            w = _worker_id()
            lo = r0 + (r1 - r0) * w // s["nw"]
            hi = r0 + (r1 - r0) * (w + 1) // s["nw"]
            batch: list = []
            for url, rec in read_range(s["shards"], lo, hi, s["kind"], s["on_corrupt"] == "skip"):
                batch.append((url, rec))
                if len(batch) == s["batch_size"]:
                    yield self._out(batch)
                    batch = []
            if batch:
                yield self._out(batch)
        except UserError as exc:
            yield WorkerFailure(str(exc))


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
    check_has_samples(info, split, source)
    spec = dict(shards=usable_shards(info, split, on_corrupt, log), kind=info.kind, shape=info.shape,
                batch_size=batch_size, rank=rank, world_size=world_size, nw=max(1, num_workers), as_uint8=as_uint8,
                on_corrupt=on_corrupt)
    ds = _EvalDataset(spec)
    if num_workers == 0:
        it = iter(ds)
    else:
        it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init))
    for item in it:
        out = finish_item(item, as_uint8, log)
        if out is not None:
            yield out
    if log.count:
        print(f"warning: {source}: split {split!r}: skipped {log.count} corrupt sample(s)", file=sys.stderr)
