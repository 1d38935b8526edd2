"""Write a file whole or not at all: a hidden temporary name in the same folder, fsync, rename.

A reader (a resumed job, a watcher, another rank) sees the old file or the new one, never half
of one; a failure or a kill leaves no temporary behind except after SIGKILL, and those are
named ``.<name>.tmp.<pid><suffix>`` so the writer's own clean-up can recognise them.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (a crash after os.replace can otherwise undo it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform or filesystem that cannot open folders: the rename still stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Keeps the suffix, since numpy appends .npy/.npz to a name that lacks it."""
    return path.with_name(f".{path.name}.tmp.{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any exception it is
    removed and ``path`` is untouched. ``durable`` fsyncs the file and the folder (skip it only
    for bulk outputs that can be rewritten, such as thousands of sample PNGs)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
