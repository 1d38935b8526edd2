"""Helpers shared by the source modules: safe archive reading, image crops and resizes,
source checksums (the options they share are in options.py)."""

from __future__ import annotations

import hashlib
import io
import lzma
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from dali_dist.errors import UserError
from dali_dist.manifest import sha256_file

# Downscaling filter for every resize: PIL's LANCZOS (antialiased; PIL scales its support
# with the reduction factor, so no aliasing when shrinking CelebA's 160 px crop to 64).
RESAMPLE_NAME = "lanczos"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# ------------------------------------------------------------------------------------------
# Archives: every member is checked before anything is read from it
# ------------------------------------------------------------------------------------------


# What a damaged tar.gz/.bz2/.xz raises while it is read: zlib and lzma errors are not OSErrors.
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def check_member_name(archive, name: str) -> None:
    """Refuse names that would land outside a folder they were extracted to."""
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive}: member {name!r} would escape the output folder")


def check_tar_members(archive, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    try:
        members = tf.getmembers()
    except _TAR_ERRORS as exc:
        raise UserError(f"{archive}: truncated or corrupt archive ({exc})") from None
    for m in members:
        check_member_name(archive, m.name)
        if m.issym() or m.islnk():
            raise UserError(f"{archive}: member {m.name!r} is a link (refused: it could point outside the output folder)")
        if not (m.isfile() or m.isdir()):
            raise UserError(f"{archive}: member {m.name!r} is not a regular file")
    return members


def open_tar(path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except _TAR_ERRORS as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None


def read_tar_member(path, tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    try:
        f = tf.extractfile(m)
        data = f.read() if f is not None else b""
    except _TAR_ERRORS as exc:
        raise UserError(f"{path}: truncated or corrupt archive at {m.name} ({exc})") from None
    if len(data) != m.size:
        raise UserError(f"{path}: truncated archive at {m.name}")
    return data


def open_zip(path) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable zip archive, truncated? ({exc})") from None
    for zi in zf.infolist():
        check_member_name(path, zi.filename)
        if stat.S_ISLNK(zi.external_attr >> 16):
            raise UserError(f"{path}: member {zi.filename!r} is a link (refused: it could point outside the output folder)")
    return zf


def check_inside(root: Path, path: Path) -> None:
    """A file found under ``root`` (possibly through a symlink) must resolve inside it."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise UserError(f"{path}: link points outside the source folder ({real})")


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def resample():
    from PIL import Image

    return Image.Resampling.LANCZOS


def center_crop(im, size: int):
    w, h = im.size
    if size > w or size > h:
        raise ValueError(f"image {w}x{h} is smaller than the {size} px crop")
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def to_square_array(im, resolution: int, channels: int, crop: Optional[int] = None) -> np.ndarray:
    """Centre crop (``crop`` px, default the largest square), resize to ``resolution`` with
    LANCZOS, and return uint8 (H, W, C)."""
    im = im.convert("L" if channels == 1 else "RGB")
    im = center_crop(im, crop if crop else min(im.size))
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), resample())
    a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


def decode_image(data: bytes):
    """PIL image from bytes, fully loaded; raises ValueError on anything corrupt."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except Exception as exc:  # PIL raises many types for damaged files
        raise ValueError(str(exc)) from None


def resize_array(a: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (H, W, C) -> (resolution, resolution, C) with LANCZOS (a no-op at the same size)."""
    if a.shape[0] == resolution and a.shape[1] == resolution:
        return a
    from PIL import Image

    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    r = np.asarray(im.resize((resolution, resolution), resample()))
    return r[:, :, None] if r.ndim == 2 else r


# ------------------------------------------------------------------------------------------
# Checksums
# ------------------------------------------------------------------------------------------


def combined_sha256(paths) -> tuple[str, dict]:
    """sha256 over the files' own sha256s (in the given order), and the per-file values."""
    per = {}
    h = hashlib.sha256()
    for p in paths:
        d = sha256_file(p)
        per[Path(p).name] = d
        h.update(f"{Path(p).name} {d}\n".encode())
    return h.hexdigest(), per


def folder_sha256(root: Path, rel_paths: list[str], progress: bool = True) -> str:
    """sha256 over (relative path, content sha256) of every file, sorted."""
    from tqdm import tqdm

    h = hashlib.sha256()
    for rel in tqdm(sorted(rel_paths), desc=f"hashing {root}", unit="file", disable=not progress or len(rel_paths) < 2000,
                    file=__import__("sys").stderr):
        h.update(f"{rel} {sha256_file(root / rel)}\n".encode())
    return h.hexdigest()


def require_exists(path: Path, what: str = "source") -> Path:
    if not path.exists():
        raise UserError(f"{path}: no such file or directory ({what})")
    return path
