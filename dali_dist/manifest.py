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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{mp}: not valid JSON ({exc})") from None
    check_manifest(m, str(mp))
    m["_sha256"] = hashlib.sha256(raw).hexdigest()
    return m


def check_manifest(m: Any, where: str) -> None:
    def bad(msg: str):
        raise UserError(f"{where}: {msg}")

    if not isinstance(m, dict):
        bad("manifest is not a JSON object")
    if m.get("format") != FORMAT:
        bad(f"format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        bad(f"format_version {m.get('format_version')!r} is not supported (this tool reads {FORMAT_VERSION})")
    for key in ("dataset", "kind", "encoding", "splits"):
        if key not in m:
            bad(f"missing field {key!r}")
    if m["kind"] not in KINDS:
        bad(f"kind {m['kind']!r} is not one of {KINDS}")
    if m["encoding"] not in ENCODINGS:
        bad(f"encoding {m['encoding']!r} is not one of {ENCODINGS}")
    if m["kind"] == "image":
        if not isinstance(m.get("resolution"), int) or m["resolution"] <= 0:
            bad(f"resolution {m.get('resolution')!r} is not a positive integer")
        if m.get("channels") not in (1, 3):
            bad(f"channels {m.get('channels')!r} is not 1 or 3")
    splits = m["splits"]
    if not isinstance(splits, dict) or not splits:
        bad("splits is empty")
    for name, s in splits.items():
        if not _SPLIT_NAME.match(str(name)):
            bad(f"split name {name!r} is not a plain name")
        if not isinstance(s, dict) or not isinstance(s.get("shards"), list) or not isinstance(s.get("count"), int):
            bad(f"split {name!r} needs 'count' and 'shards'")
        total = 0
        for sh in s["shards"]:
            if not isinstance(sh, dict) or not isinstance(sh.get("name"), str) or not isinstance(sh.get("count"), int):
                bad(f"split {name!r}: shard entries need 'name' and 'count'")
            # Names are relative to the manifest's folder and never escape it.
            if not _SHARD_NAME.match(sh["name"]) or not sh["name"].startswith(f"{name}/"):
                bad(f"shard name {sh['name']!r} is not '{name}/shard-NNNNNN.tar'")
            total += sh["count"]
        if total != s["count"]:
            bad(f"split {name!r}: shard counts add up to {total}, not {s['count']}")
