"""A command writes its own output and nothing else.

Before it does any work, a command checks every path it will write (``check_file``,
``check_folder``): a parent that is a file, or a folder where a file must go, is refused in one
line, and a file that is already there is replaced only when it carries dali-dist's mark or
the user passed ``--overwrite``. The mark lives inside each format, so it travels with the file:

  .npz          an array ``written_by`` holding ``dali-dist <command>``
  .png          the text chunk ``Software: dali-dist <command>``
  .json         the field ``"written_by": "dali-dist <command>"``
  .safetensors  the metadata entry ``written_by``

A format without room for a mark (``.npy``) is replaced only with ``--overwrite``. Files in an
output folder that the command does not write are never touched, and every write goes through
``atomic.atomic_path``, so a failure leaves the old file and no temporary behind.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from . import atomic
from .errors import UserError

MARK = "written_by"
_MAX_JSON_BYTES = 64 << 20  # an evaluation record is kilobytes; a bigger file is not ours
_MAX_MARK_BYTES = 4096


def mark(command: str) -> str:
    return f"dali-dist {command}"


def _marked(value) -> bool:
    return isinstance(value, str) and value.startswith("dali-dist ")


def _npz_marked(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:  # read only the small mark, never the arrays
        info = zf.getinfo(f"{MARK}.npy")
        if info.file_size > _MAX_MARK_BYTES:
            return False
        with zf.open(info) as fh:
            return _marked(str(np.lib.format.read_array(fh, allow_pickle=False)))


def _png_marked(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:  # tEXt before IDAT: read without decoding the pixels
        return _marked(im.info.get("Software"))


def _json_marked(path: Path) -> bool:
    if path.stat().st_size > _MAX_JSON_BYTES:
        return False
    obj = json.loads(path.read_text())
    return isinstance(obj, dict) and _marked(obj.get(MARK))


def _safetensors_marked(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return _marked((f.metadata() or {}).get(MARK))


_READERS = {".npz": _npz_marked, ".png": _png_marked, ".json": _json_marked, ".safetensors": _safetensors_marked}


def is_ours(path: str | Path) -> bool:
    """True when ``path`` is a regular file carrying dali-dist's mark; anything unreadable,
    foreign or unmarkable is not ours."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None or path.is_symlink() or not path.is_file():
        return False
    try:
        return bool(reader(path))
    except Exception:  # a damaged, hostile or foreign file: simply not ours
        return False


def _check_parents(path: Path) -> None:
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{path}: {parent} is a file, not a folder")
            return


def check_file(path: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written or must not be replaced."""
    path = Path(path)
    _check_parents(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite and not is_ours(path):
        raise UserError(f"{option} {path}: exists and was not written by dali-dist; "
                        "choose another path or pass --overwrite to replace it")
    return path


def check_folder(path: str | Path, names: Iterable[str], *, overwrite: bool, option: str = "--out") -> Path:
    """An output folder: it may hold anything, but each of ``names`` that exists must be ours."""
    path = Path(path)
    _check_parents(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is not a folder")
    if path.is_dir():
        for name in names:
            check_file(path / name, overwrite=overwrite, option=option)
    return path


def save_npz(path: str | Path, command: str, **arrays) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: numpy adds no suffix
        np.savez(fh, **{MARK: np.array(mark(command))}, **arrays)


def save_png(path: str | Path, image, command: str, *, durable: bool = True) -> None:
    """``image``: a PIL image. ``durable=False`` skips the fsync (thousands of sample PNGs)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", mark(command))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path, durable=durable) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def write_json(path: str | Path, obj: dict, command: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {MARK: mark(command), **obj})
