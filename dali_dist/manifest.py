"""The shard directory's ``manifest.json``: what `dali-dist prep` writes and the loader reads.

Layout of a prepared dataset::

    DIR/manifest.json
    DIR/<split>/shard-000000.tar, shard-000001.tar, ...

A manifest (``format: "dali-dist-shards"``, ``format_version: 1``) holds::

    dataset        "mnist" | "fashion-mnist" | "cifar10" | "celeba" | "folder" | "grid2d"
    kind           "image" (one sample per key) or "points" (blocks of 2D points per key)
    resolution     square side in pixels (None for points)
    channels       1 or 3 (None for points)
    encoding       "png" | "raw" (binary PGM/PPM: uncompressed uint8) | "npy" (points)
    num_classes    number of label values, or None when the source has no labels (label -1)
    splits         {name: {"count": N, "shards": [{"name", "count", "sha256", "size"}]}}
    source         {"path", "sha256", ...}: the input and its checksum
    options        the preparation options that change the output
    fingerprint    sha256 of everything that determines the shard bytes
    tool_version   dali_dist.__version__ of the writer
    skipped        {"count": N, "keys": [...]} corrupt inputs left out

Shard names in the manifest are relative to DIR and always ``<split>/shard-NNNNNN.tar``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT = "dali-dist-shards"
FORMAT_VERSION = 1
KINDS = ("image", "points")
ENCODINGS = ("png", "raw", "npy")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]+/shard-\d{6}\.tar$")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_RESOLUTION = 1 << 15  # an image side beyond this is a damaged manifest, not a dataset
MAX_CLASSES = 1 << 20


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(bufsize)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, fsync, then rename over ``path``."""
    from .atomic import write_json

    write_json(path, obj, indent=1, sort_keys=True)


def manifest_path(path: str | os.PathLike) -> Path:
    """``path`` may be the shard directory or its manifest.json."""
    p = Path(path)
    return p if p.name == MANIFEST_NAME and not p.is_dir() else p / MANIFEST_NAME


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and check a manifest. ``path``: a shard directory (or its manifest.json).

    Raises UserError (one line naming the file) when it is missing or malformed.
    The returned dict has an extra key ``"_sha256"``: the checksum of the manifest bytes.
    """
    mp = manifest_path(path)
    try:
        raw = mp.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{mp}: no manifest.json (not a directory made by `dali-dist prep`)") from None
    except OSError as exc:
        raise UserError(f"{mp}: cannot read ({exc.strerror or exc})") from None
    try:
        m = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or bytes, a 5000-digit number, deep nesting
        raise UserError(f"{mp}: not valid JSON ({str(exc)[:200]})") from None
    check_manifest(m, str(mp))
    m["_sha256"] = hashlib.sha256(raw).hexdigest()
    return m


def _short(v: Any) -> str:
    """repr for a message: a hostile value may be megabytes long."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_count(v: Any) -> bool:
    # JSON true would pass as the integer 1
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_manifest(m: Any, where: str) -> None:
    def bad(msg: str):
        raise UserError(f"{where}: {msg}")

    if not isinstance(m, dict):
        bad("manifest is not a JSON object")
    if m.get("format") != FORMAT:
        bad(f"format is {_short(m.get('format'))}, expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        bad(f"format_version {_short(m.get('format_version'))} is not supported (this tool reads {FORMAT_VERSION})")
    for key in ("dataset", "kind", "encoding", "splits"):
        if key not in m:
            bad(f"missing field {key!r}")
    if not isinstance(m["dataset"], str):
        bad(f"dataset {_short(m['dataset'])} is not a name")
    if m["kind"] not in KINDS:
        bad(f"kind {_short(m['kind'])} is not one of {KINDS}")
    if m["encoding"] not in ENCODINGS or (m["encoding"] == "npy") != (m["kind"] == "points"):
        bad(f"encoding {_short(m['encoding'])} does not fit kind {m['kind']!r}")
    if m["kind"] == "image":
        _check_image_shape(m, bad)
    n = m.get("num_classes")
    if n is not None and not (_is_count(n) and 1 <= n <= MAX_CLASSES):
        bad(f"num_classes {_short(n)} is not null or an integer in [1, {MAX_CLASSES}]")
    splits = m["splits"]
    if not isinstance(splits, dict) or not splits:
        bad("splits is empty")
    seen: set = set()
    for name, s in splits.items():
        _check_split(name, s, seen, bad)


def _check_image_shape(m: dict, bad) -> None:
    res, ch = m.get("resolution"), m.get("channels")
    if not _is_count(res) or not 1 <= res <= MAX_RESOLUTION:
        bad(f"resolution {_short(res)} is not an integer in [1, {MAX_RESOLUTION}]")
    if not _is_count(ch) or ch not in (1, 3):
        bad(f"channels {_short(ch)} is not 1 or 3")


def _check_split(name: str, s: Any, seen: set, bad) -> None:
    """Counts are non-negative integers that add up; every shard is listed once, by a name
    inside the manifest's folder (a count the data cannot back would stall or skew training)."""
    if not _SPLIT_NAME.match(str(name)):
        bad(f"split name {_short(name)} is not a plain name")
    if not isinstance(s, dict) or not isinstance(s.get("shards"), list) or not _is_count(s.get("count")):
        bad(f"split {name!r} needs 'count' (an integer >= 0) and 'shards' (a list)")
    total = 0
    for sh in s["shards"]:
        if not isinstance(sh, dict) or not isinstance(sh.get("name"), str):
            bad(f"split {name!r}: shard entries need 'name' and 'count'")
        if not _is_count(sh.get("count")):
            bad(f"split {name!r}: shard {_short(sh['name'])} has count {_short(sh.get('count'))}, not an integer >= 0")
        # Names are relative to the manifest's folder and never escape it.
        if not _SHARD_NAME.match(sh["name"]) or not sh["name"].startswith(f"{name}/"):
            bad(f"shard name {_short(sh['name'])} is not '{name}/shard-NNNNNN.tar'")
        if sh["name"] in seen:
            bad(f"shard {_short(sh['name'])} is listed twice")
        seen.add(sh["name"])
        if "size" in sh and not _is_count(sh["size"]):
            bad(f"shard {_short(sh['name'])}: size {_short(sh['size'])} is not an integer >= 0")
        if "sha256" in sh and not (isinstance(sh["sha256"], str) and _SHA256.match(sh["sha256"])):
            bad(f"shard {_short(sh['name'])}: sha256 {_short(sh['sha256'])} is not 64 hex digits")
        total += sh["count"]
    if total != s["count"]:
        bad(f"split {name!r}: shard counts add up to {total}, not {_short(s['count'])}")
