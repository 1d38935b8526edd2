"""Helpers that damage prepared shard directories in controlled ways (for the loader tests)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

from data_prep.shards import TarWriter


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def shard_path(root: Path, split: str, i: int) -> Path:
    return root / manifest(root)["splits"][split]["shards"][i]["name"]


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def rewrite(root: Path, split: str, i: int, edit) -> list[str]:
    """Rewrite shard i of ``split`` with ``edit(name, data) -> bytes``, and record the new size
    and sha256 in the manifest: the shard passes the manifest check, its samples do not.
    Returns the keys whose data changed."""
    path = shard_path(root, split, i)
    items, changed = members(path), []
    with open(path, "wb") as f:
        tw = TarWriter(f)
        for name, data in items:
            new = edit(name, data)
            if new != data:
                changed.append(name.split(".", 1)[0])
            tw.add(name, new)
        tw.close()
    m = manifest(root)
    entry = m["splits"][split]["shards"][i]
    entry["size"] = path.stat().st_size
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))
    return sorted(set(changed))


def flip_bytes(path: Path, at: float = 0.5, n: int = 64) -> None:
    """Same size, different content: only the sha256 check can tell."""
    b = bytearray(path.read_bytes())
    k = int(len(b) * at)
    b[k:k + n] = bytes(x ^ 0xA5 for x in b[k:k + n])
    path.write_bytes(bytes(b))


def garbage_image(keys: set):
    def edit(name: str, data: bytes) -> bytes:
        key, ext = name.split(".", 1)
        return b"\x89PNG\r\n\x1a\n not an image" if key in keys and ext != "cls" else data
    return edit


def set_count(root: Path, split: str, i: int, count: int) -> None:
    m = manifest(root)
    s = m["splits"][split]
    s["count"] += count - s["shards"][i]["count"]
    s["shards"][i]["count"] = count
    (root / "manifest.json").write_text(json.dumps(m))


def keys_of(path: Path) -> list[str]:
    return sorted({n.split(".", 1)[0] for n, _ in members(path)})


def claim_size(root: Path, split: str, i: int, member: int, field: bytes) -> None:
    """Give member ``member`` of shard i a header size field of ``field`` (12 bytes: octal, or
    GNU base-256) and a valid checksum, and record the shard's new sha256 in the manifest:
    only reading the tar can tell that the member runs past the end of the file."""
    path = shard_path(root, split, i)
    b = bytearray(path.read_bytes())
    off = 0
    for _ in range(member):
        off += 512 + (int(b[off + 124:off + 136].rstrip(b"\0 "), 8) + 511) // 512 * 512
    hdr = bytearray(b[off:off + 512])
    hdr[124:136] = field
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    b[off:off + 512] = hdr
    path.write_bytes(bytes(b))
    m = manifest(root)
    m["splits"][split]["shards"][i]["sha256"] = hashlib.sha256(bytes(b)).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))


HUGE_SIZES = {"octal": b"%011o\0" % (8 ** 11 - 1), "base-256": b"\x80" + (10 ** 20).to_bytes(11, "big")}
