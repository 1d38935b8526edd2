"""The shard writer shared by every source: deterministic tars, atomic shards, resumable runs.

A source (cifar10.py, celeba.py, ...) describes *what* to write: its splits as ordered lists
of item references, and how to load one item. ``build()`` decides *how*: it cuts each split
into shards of ``shard_size`` samples, encodes and writes them (in ``workers`` processes),
and writes ``DIR/manifest.json`` last (see dali_dist/manifest.py for its fields).

Guarantees:
* Byte-identical shards for the same input and options: members in a fixed order, tar
  headers with mtime 0, uid/gid 0, no user names, mode 0644; PNGs without timestamps; the
  train split's order is a fixed permutation (``SHUFFLE_SEED``) so each shard is a random
  sample of the split (test/valid splits keep the source's order).
* Each shard is written to ``.shard-NNNNNN.tar.tmp.<pid>`` and renamed when complete; a
  crashed run leaves only hidden temporary names, which the next run removes.
* ``.prep-state.json`` records each finished shard (count, sha256, size) under a
  fingerprint of the source checksum and options; a re-run re-hashes and keeps the shards
  that match and writes only the rest. ``force=True`` rebuilds everything. A finished
  directory whose manifest has another fingerprint is refused without ``force``.
* Corrupt inputs are skipped, counted, listed in the manifest, and the run fails once more
  than ``max_corrupt`` were seen.
"""

from __future__ import annotations

import abc

import hashlib
import io
import os
import random
import re
import sys
import tarfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dali_dist import __version__
from dali_dist.errors import UserError
from dali_dist.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, check_manifest, sha256_file, sha256_json, write_json_atomic

STATE_NAME = ".prep-state.json"
SHUFFLE_SEED = 20240527
PNG_COMPRESS_LEVEL = 6  # zlib level: deterministic for a given zlib; 6 is PIL's default
ENCODINGS = ("png", "raw")
_REC = 512
_RECORDSIZE = 20 * 512  # tarfile's record size: archives are padded to a multiple of it


class Source(abc.ABC):
    """What a source module provides; each dataset module subclasses it."""

    dataset: str = "unknown"
    kind: str = "image"  # or "points"
    resolution: Optional[int] = None
    channels: Optional[int] = None
    num_classes: Optional[int] = None
    shuffle_train: bool = True

    @abc.abstractmethod
    def source_info(self) -> dict:  # {"path": ..., "sha256": ..., ...}
        """Where the input came from and its checksum (recorded in the manifest)."""

    def options(self) -> dict:  # the options that change the output
        return {}

    @abc.abstractmethod
    def splits(self) -> dict[str, list]:  # split -> ordered item references (picklable, small)
        """Each split's ordered item references."""

    @abc.abstractmethod
    def load(self, split: str, item) -> tuple[str, Any, int]:
        """(key, uint8 HxWxC array or None when the input is corrupt, label). For points:
        (key, (xy float32 (n, 2), labels int64 (n,)), 0)."""

    def item_count(self, split: str, item) -> int:
        return 1


# ------------------------------------------------------------------------------------------
# Encoding and tar writing
# ------------------------------------------------------------------------------------------


def encode_image(arr: np.ndarray, encoding: str) -> tuple[str, bytes]:
    """uint8 (H, W, C) -> (extension, bytes). "raw" is binary PGM (grey) / PPM (RGB): a
    14-byte text header and the pixels, readable by any image library, decodable with one
    ``numpy.frombuffer``."""
    h, w, c = arr.shape
    if encoding == "raw":
        head = b"P6" if c == 3 else b"P5"
        return ("ppm" if c == 3 else "pgm"), head + b"\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(arr).tobytes()
    from PIL import Image

    im = Image.fromarray(arr[:, :, 0] if c == 1 else arr, "L" if c == 1 else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return "png", buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _tar_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class TarWriter:
    """Minimal deterministic tar writer that hashes what it writes."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def _w(self, b: bytes):
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)

    def add(self, name: str, data: bytes):
        self._w(_tar_header(name, len(data)))
        self._w(data)
        pad = -len(data) % _REC
        if pad:
            self._w(b"\0" * pad)

    def close(self):
        self._w(b"\0" * (2 * _REC))
        pad = -self.n % _RECORDSIZE
        if pad:
            self._w(b"\0" * pad)


# ------------------------------------------------------------------------------------------
# One shard (runs in a worker process)
# ------------------------------------------------------------------------------------------

_SOURCE: Optional[Source] = None


def _init_worker(source: Source):
    global _SOURCE
    _SOURCE = source  # inherited through fork: large in-memory sources (CIFAR, MNIST) are not copied


def write_shard(split: str, name: str, items: list, path: str, encoding: str) -> dict:
    src = _SOURCE
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp.{os.getpid()}")
    count, bad = 0, []
    try:
        with open(tmp, "wb") as f:
            tw = TarWriter(f)
            for item in items:
                key, data, label = src.load(split, item)
                if data is None:
                    bad.append(key)
                    continue
                if src.kind == "points":
                    xy, cls = data
                    tw.add(f"{key}.xy.npy", npy_bytes(xy.astype("<f4")))
                    tw.add(f"{key}.cls.npy", npy_bytes(cls.astype("<i8")))
                    count += len(xy)
                else:
                    ext, blob = encode_image(data, encoding)
                    tw.add(f"{key}.{ext}", blob)
                    tw.add(f"{key}.cls", str(int(label)).encode())
                    count += 1
            tw.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"name": name, "count": count, "sha256": tw.h.hexdigest(), "size": tw.n, "bad": bad}


# ------------------------------------------------------------------------------------------
# The whole build
# ------------------------------------------------------------------------------------------


def plan_shards(source: Source, shard_size: int) -> dict[str, list[tuple[str, list]]]:
    """split -> [(shard name relative to DIR, [items])]; the train split in a fixed random order."""
    plan = {}
    for split, items in source.splits().items():
        items = list(items)
        if split == "train" and source.shuffle_train:
            random.Random(SHUFFLE_SEED).shuffle(items)
        shards, cur, n = [], [], 0
        for it in items:
            cur.append(it)
            n += source.item_count(split, it)
            if n >= shard_size:
                shards.append(cur)
                cur, n = [], 0
        if cur:
            shards.append(cur)
        plan[split] = [(f"{split}/shard-{i:06d}.tar", s) for i, s in enumerate(shards)]
    return plan


def _owned_files(out: Path, splits) -> list[Path]:
    """Files this tool may delete: shards, temporaries, the manifest and the state file."""
    files = [p for p in (out / MANIFEST_NAME, out / STATE_NAME) if p.exists()]
    for split in splits:
        d = out / split
        if d.is_dir():
            files += [p for p in d.iterdir() if p.is_file() and p.name.startswith(("shard-", ".shard-")) and ".tar" in p.name]
    files += [p for p in out.glob(".*.tmp.*") if p.is_file()]
    return files


SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")
SHARD_TMP = re.compile(r"^\.shard-\d{6}\.tar\.tmp\.\d+$")
JSON_TMP = re.compile(r"^\.(manifest\.json|\.prep-state\.json)\.tmp\.\d+(\.json)?$")  # atomic.py keeps the suffix
# Folders other dali-dist commands keep beside the shards (evaluation caches, the classifier).
COMPANIONS = {"fid_stats", "classifier"}


def _ours_json(path: Path) -> Optional[dict]:
    """The manifest or state file, if it is one prep wrote (a JSON object with a fingerprint)."""
    obj = _load_json(path)
    return obj if obj is not None and isinstance(obj.get("fingerprint"), str) else None


def foreign_entries(out: Path, splits) -> list[Path]:
    """What in ``out`` prep did not write, judged by its own manifest and file names: shards
    count as prep's when its manifest or state file is there and the name is its own pattern
    (or the manifest lists it); everything else (a user's files, a manifest that is not prep's)
    is foreign. prep never deletes or overwrites a foreign entry, and refuses to start beside
    one unless --force."""
    if not out.is_dir():
        return []
    manifest, state = _ours_json(out / MANIFEST_NAME), _ours_json(out / STATE_NAME)
    ours_present = manifest is not None or state is not None
    listed = set()
    for prev in (manifest, state):
        if prev and isinstance(prev.get("splits"), dict):
            for sp in prev["splits"].values():
                listed |= {sh.get("name") for sh in (sp.get("shards") or []) if isinstance(sh, dict)}
        if prev and isinstance(prev.get("shards"), dict):
            listed |= set(prev["shards"])
    split_dirs = set(splits) | {n.split("/")[0] for n in listed if isinstance(n, str) and "/" in n}
    foreign = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name == MANIFEST_NAME and manifest is not None or name == STATE_NAME and state is not None:
            continue
        if JSON_TMP.match(name) and entry.is_file():
            continue
        if name in COMPANIONS and entry.is_dir() and not entry.is_symlink():
            continue
        if name in split_dirs and entry.is_dir() and not entry.is_symlink():
            for f in sorted(entry.iterdir()):
                rel = f"{name}/{f.name}"
                own_name = SHARD_NAME.match(f.name) or SHARD_TMP.match(f.name)
                if f.is_file() and not f.is_symlink() and (rel in listed or (ours_present and own_name)
                                                           or SHARD_TMP.match(f.name)):
                    continue
                foreign.append(f)
            continue
        foreign.append(entry)
    return foreign


def _check_ownership(out: Path, plan: dict, planned: set, force: bool) -> list[Path]:
    """The entries of ``out`` prep did not write; an error unless ``force``."""
    foreign = foreign_entries(out, plan)
    if not foreign:
        return foreign
    shown = ", ".join(str(p.relative_to(out)) for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    if not force:
        raise UserError(f"{out}: holds files prep did not write ({shown}); choose an empty or new --out, "
                        "or pass --force to write beside them")
    replaced = [p for p in foreign if str(p.relative_to(out)) in planned | {MANIFEST_NAME}]
    kept = len(foreign) - len(replaced)
    what = (f"replacing {', '.join(str(p.relative_to(out)) for p in replaced)}" if replaced
            else "replacing none of them")
    print(f"prep: --force: {out} holds files prep did not write; {what}; {kept} other file(s) left as they are",
          file=sys.stderr)
    return foreign


def build(source: Source, out, *, shard_size: int, workers: int = 1, encoding: str = "png",
          force: bool = False, max_corrupt: int = 100, progress: bool = True) -> dict:
    """Write the shards and manifest for ``source`` into ``out``; return the manifest."""
    out = Path(out)
    encoding = _checked_options(source, out, shard_size, workers, encoding)
    src_info = source.source_info()
    options = {"shard_size": shard_size, "encoding": encoding, **source.options()}
    fingerprint = sha256_json({"format_version": FORMAT_VERSION, "tool_version": __version__, "dataset": source.dataset,
                               "source_sha256": src_info["sha256"], "options": options})
    plan = plan_shards(source, shard_size)
    planned = {n for shards in plan.values() for n, _ in shards}
    foreign = _check_ownership(out, plan, planned, force)
    # a foreign file is deleted only where a shard of this plan replaces it anyway (--force)
    keep = {p for p in foreign if str(p.relative_to(out)) not in planned}
    out.mkdir(parents=True, exist_ok=True)

    old_manifest = _clear_previous(out, plan, fingerprint, keep, force)
    state, jobs = _plan_jobs(out, plan, fingerprint, old_manifest, encoding)
    _drop_stale(out, plan, planned, keep, jobs)
    # The state file marks the folder as prep's before any shard lands, so that shards left by a
    # killed run are recognised as its own by the next one.
    write_json_atomic(out / STATE_NAME, state)
    _write_shards(source, out, state, jobs, workers=workers, max_corrupt=max_corrupt, progress=progress,
                  source_path=src_info["path"])

    # Every shard is there: the manifest, written last.
    manifest = _manifest(source, plan, state, encoding=encoding, src_info=src_info, options=options,
                         fingerprint=fingerprint)
    check_manifest(manifest, str(out / MANIFEST_NAME))
    write_json_atomic(out / MANIFEST_NAME, manifest)
    (out / STATE_NAME).unlink(missing_ok=True)
    if progress:
        _report(out, manifest, written=len(jobs))
    return manifest


def _checked_options(source: Source, out: Path, shard_size: int, workers: int, encoding: str) -> str:
    """One error line for an option that cannot be; the encoding the source is written with."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if source.kind == "image" and encoding not in ENCODINGS:
        raise UserError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    return "npy" if source.kind == "points" else encoding


def _clear_previous(out: Path, plan: dict, fingerprint: str, keep: set, force: bool) -> Optional[dict]:
    """Refuse a finished folder of other options (unless ``force``, which deletes prep's own
    files); remove temporaries of crashed runs. Returns the manifest found there, if prep's."""
    old_manifest = _ours_json(out / MANIFEST_NAME)
    if old_manifest is not None and old_manifest.get("fingerprint") != fingerprint and not force:
        raise UserError(f"{out}: holds shards prepared from another source or other options "
                        f"(dataset {old_manifest.get('dataset')!r}); pass --force to rebuild")
    if force:
        for p in _owned_files(out, plan):
            if p not in keep:
                p.unlink()
    for p in _owned_files(out, plan):  # leftovers of crashed runs
        if p not in keep and p.name.startswith(".") and ".tmp." in p.name:
            p.unlink()
    return old_manifest


def _plan_jobs(out: Path, plan: dict, fingerprint: str, old_manifest: Optional[dict], encoding: str):
    """(state, jobs): the shards of an earlier run of the same fingerprint whose bytes still
    match their recorded size and sha256 are kept in ``state``; every other shard is a job."""
    done: dict[str, dict] = {}
    for prev in (old_manifest, _load_json(out / STATE_NAME)):
        if prev and prev.get("fingerprint") == fingerprint:
            if "splits" in prev:  # a finished manifest: per split lists
                for s in prev["splits"].values():
                    done.update({sh["name"]: {**sh, "bad": sh.get("skipped", [])} for sh in s.get("shards", [])})
            else:
                done.update(prev.get("shards", {}))
    state = {"fingerprint": fingerprint, "shards": {}}
    jobs = []
    for split, shards in plan.items():
        (out / split).mkdir(exist_ok=True)
        for name, items in shards:
            prev = done.get(name)
            p = out / name
            if prev and p.is_file() and p.stat().st_size == prev.get("size") and sha256_file(p) == prev.get("sha256"):
                state["shards"][name] = prev
            else:
                jobs.append((split, name, items, str(p), encoding))
    return state, jobs


def _drop_stale(out: Path, plan: dict, planned: set, keep: set, jobs: list) -> None:
    """Delete prep's shards that this plan no longer has (an earlier, larger plan), and the
    manifest while shards remain to be written (it is written last, only when all are there)."""
    for p in _owned_files(out, plan):
        rel = f"{p.parent.name}/{p.name}"
        if p.name.startswith("shard-") and rel not in planned and p not in keep:
            p.unlink()
    if (out / MANIFEST_NAME).exists() and jobs:
        (out / MANIFEST_NAME).unlink()


def _write_shards(source: Source, out: Path, state: dict, jobs: list, *, workers: int, max_corrupt: int,
                  progress: bool, source_path: str) -> None:
    """Run the jobs (in ``workers`` processes), recording each finished shard in the state file;
    stop once more than ``max_corrupt`` inputs were skipped."""
    from tqdm import tqdm

    todo = sum(source.item_count(j[0], it) for j in jobs for it in j[2])
    unit = "pt" if source.kind == "points" else "img"
    bar = tqdm(total=todo, unit=unit, unit_scale=True, desc=f"{source.dataset} -> {out}", file=sys.stderr,
               disable=not progress or not jobs, dynamic_ncols=True)
    n_bad = sum(len(e.get("bad", [])) for e in state["shards"].values())

    def finished(entry: dict, items: int):
        nonlocal n_bad
        state["shards"][entry["name"]] = entry
        write_json_atomic(out / STATE_NAME, state)
        bar.update(items)
        n_bad += len(entry["bad"])
        if n_bad > max_corrupt:
            first = [k for e in state["shards"].values() for k in e.get("bad", [])][:3]
            raise UserError(f"{source_path}: {n_bad} corrupt or missing images (more than --max-corrupt "
                            f"{max_corrupt}), e.g. {', '.join(first)}")

    try:
        if workers == 1 or len(jobs) <= 1:
            _init_worker(source)
            for job in jobs:
                finished(write_shard(*job), sum(source.item_count(job[0], it) for it in job[2]))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_worker,
                                     initargs=(source,)) as pool:
                pending = {pool.submit(write_shard, *job): job for job in jobs}
                try:
                    while pending:
                        ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in ready:
                            job = pending.pop(fut)
                            finished(fut.result(), sum(source.item_count(job[0], it) for it in job[2]))
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        bar.close()


def _manifest(source: Source, plan: dict, state: dict, *, encoding: str, src_info: dict, options: dict,
              fingerprint: str) -> dict:
    """The manifest of a finished build: per split its count and shards (with what each skipped)."""
    splits = {}
    skipped = []
    for split, shards in plan.items():
        entries = [state["shards"][name] for name, _ in shards]
        skipped += [k for e in entries for k in e.get("bad", [])]
        splits[split] = {"count": sum(e["count"] for e in entries),
                         "shards": [{**{k: e[k] for k in ("name", "count", "sha256", "size")},
                                     **({"skipped": e["bad"]} if e.get("bad") else {})} for e in entries]}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
        "dataset": source.dataset, "kind": source.kind, "resolution": source.resolution,
        "channels": source.channels, "encoding": encoding, "num_classes": source.num_classes,
        "splits": splits, "source": src_info, "options": options, "fingerprint": fingerprint,
        "skipped": {"count": len(skipped), "keys": skipped[:1000]},
    }


def _report(out: Path, manifest: dict, written: int) -> None:
    """prep's closing line: samples per split, shards written and kept, inputs skipped."""
    splits = manifest["splits"]
    shards = sum(len(v["shards"]) for v in splits.values())
    counts = ", ".join(f"{s} {v['count']}" for s, v in splits.items())
    msg = f"{out}: {manifest['dataset']} {counts} in {shards} shards ({written} written, {shards - written} kept)"
    if manifest["skipped"]["count"]:
        msg += f"; skipped {manifest['skipped']['count']} corrupt or missing input(s)"
    print(msg, file=sys.stderr)


def _load_json(path: Path) -> Optional[dict]:
    import json

    try:
        with open(path) as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
