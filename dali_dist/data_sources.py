"""What a data source holds: ``describe`` reads a shard directory's manifest, or probes a URL
pattern's first shard, into a DatasetInfo (kind, resolution, channels, split counts, shards)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .decode import decode_image
from .errors import UserError
from .manifest import MANIFEST_NAME, read_manifest
from .shard_reader import image_member, is_local, iter_shard_samples, local_path, read_records


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
        urls.remove(u)

    if all(is_local(u) for u in urls):
        for u in list(urls):
            if not Path(local_path(u)).is_file():
                drop(u, f"{u}: no such shard")
        if not urls:
            raise UserError(f"{src}: none of the shards exists")
        info = _listed_in_manifest(urls, split)
        if info is not None:
            return replace(info, unreadable=unreadable)
    return _count_pattern(src, urls, split, drop, lenient=on_corrupt == "skip", unreadable=unreadable)


def _listed_in_manifest(urls: list, split: str) -> Optional[DatasetInfo]:
    """A local pattern over shards that a manifest describes (DIR/<split>/shard-*.tar) borrows
    the manifest's counts and shape, so no counting pass is needed; None where any shard of
    the pattern is not in the manifest."""
    root = Path(local_path(urls[0])).resolve().parent.parent
    if not (root / MANIFEST_NAME).is_file():
        return None
    info = _from_manifest(root)
    known = {str(Path(u).resolve()): (c, h, z) for s in info.shards for u, c, h, z in
             zip(info.shards[s], info.shard_counts[s], info.shard_sha256[s], info.shard_sizes[s])}
    hits = [known.get(str(Path(local_path(u)).resolve())) for u in urls]
    if not all(hits):
        return None
    counts = [c for c, _, _ in hits]
    return DatasetInfo(
        dataset=info.dataset, resolution=info.resolution, channels=info.channels,
        splits={split: sum(counts)}, encoding=info.encoding, shards={split: urls},
        manifest_sha256=info.manifest_sha256, kind=info.kind, shard_counts={split: counts},
        num_classes=info.num_classes, root=info.root, shard_sha256={split: [h for _, h, _ in hits]},
        shard_sizes={split: [z for _, _, z in hits]},
    )


def _count_pattern(src: str, urls: list, split: str, drop, *, lenient: bool, unreadable: list) -> DatasetInfo:
    """A bare pattern: the first readable sample gives the shape; every shard is counted once.
    ``drop(url, message)`` raises, or records the shard as unreadable and removes it from ``urls``."""
    probed = None
    for u in list(urls):
        try:
            probed = _probe(u)
            break
        except UserError as exc:
            drop(u, str(exc))
    if probed is None:
        raise UserError(f"{src}: no shard of the pattern is readable")
    kind, encoding, res, ch = probed
    print(f"dali-dist data: {src}: no manifest, counting samples in {len(urls)} shard(s)", file=sys.stderr)
    counts = []
    for u in list(urls):
        try:
            counts.append(sum(1 for _ in read_records(u, kind, lenient=lenient)))
        except UserError as exc:
            drop(u, str(exc))
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
