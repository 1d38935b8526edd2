"""CelebA (aligned and cropped release) -> shards.

    python -m data_prep.celeba --source img_align_celeba.zip --out data/celeba64
    dali-dist prep celeba --source img_align_celeba/ --out data/celeba128 --resolution 128

``--source``: ``img_align_celeba.zip`` (members ``img_align_celeba/000001.jpg`` ...), the
extracted ``img_align_celeba/`` folder, or a folder holding either. The split file
``list_eval_partition.txt`` (lines ``000001.jpg 0``; 0 train, 1 valid, 2 test) is taken from
``--partition`` or looked for beside the source (also in ``Eval/``, the Drive layout).
Each 178x218 image is centre-cropped to ``--crop`` (160, the authors' choice) and resized to
``--resolution`` (64 by default) with PIL's LANCZOS filter (antialiased). Keys are the file
stems (``000001``). A corrupt or missing image is skipped and counted (the run fails past
``--max-corrupt``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import typer

from dali_dist.errors import UserError

from . import common, options
from .shards import Source

ZIP = "img_align_celeba.zip"
FOLDER = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
SPLIT_NAMES = {"0": "train", "1": "valid", "2": "test"}


def locate(source: Path) -> Path:
    if not source.exists():
        raise UserError(f"{source}: no such file or directory")
    if source.is_file():
        return source
    if any(source.glob("*.jpg")):
        return source
    for cand in (source / FOLDER, source / ZIP):
        if cand.exists():
            return cand
    raise UserError(f"{source}: no {ZIP}, {FOLDER}/ or .jpg files here")


def find_partition(images: Path, given: Optional[Path]) -> Path:
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"{given}: no such partition file")
        return Path(given)
    base = images.parent
    for cand in (images / PARTITION, base / PARTITION, base / "Eval" / PARTITION, base.parent / PARTITION):
        if cand.is_file():
            return cand
    raise UserError(f"{images}: no {PARTITION} beside it (CelebA's split file; pass --partition PATH)")


def read_partition(path: Path) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {v: [] for v in SPLIT_NAMES.values()}
    seen = set()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in SPLIT_NAMES or "/" in parts[0] or "\\" in parts[0] or parts[0].startswith("."):
            raise UserError(f"{path}: line {lineno} is not '<image>.jpg <0|1|2>': {line.strip()[:60]!r}")
        if parts[0] in seen:
            raise UserError(f"{path}: line {lineno}: {parts[0]} listed twice")
        seen.add(parts[0])
        splits[SPLIT_NAMES[parts[1]]].append(parts[0])
    if not seen:
        raise UserError(f"{path}: no entries")
    return {k: v for k, v in splits.items() if v}


class CelebASource(Source):
    dataset = "celeba"
    kind = "image"
    channels = 3
    num_classes = None  # no class labels: label -1

    def __init__(self, source: Path, resolution: int = 64, crop: int = 160, partition: Optional[Path] = None,
                 progress: bool = True):
        if resolution < 1 or crop < 1:
            raise UserError(f"--resolution and --crop must be >= 1, got {resolution} and {crop}")
        self.path = locate(Path(source))
        self.resolution, self.crop, self.progress = resolution, crop, progress
        self.partition_path = find_partition(self.path, partition)
        self.parts = read_partition(self.partition_path)
        self.is_zip = self.path.is_file()
        if self.is_zip:
            with common.open_zip(self.path) as zf:  # checks every member name
                self.members = {Path(zi.filename).name: zi.filename for zi in zf.infolist() if not zi.is_dir()}
        else:
            self.members = {}
            for p in self.path.iterdir():
                if p.is_file():
                    if p.is_symlink():
                        common.check_inside(self.path, p)
                    self.members[p.name] = p.name
        listed = sum(len(v) for v in self.parts.values())
        found = sum(n in self.members for v in self.parts.values() for n in v)
        if found == 0:
            raise UserError(f"{self.path}: none of the {listed} images in {self.partition_path.name} are here")
        self._zf = None
        self._pid = None

    def source_info(self) -> dict:
        from dali_dist.manifest import sha256_file

        if self.is_zip:
            images = sha256_file(self.path)
        else:
            names = [n for v in self.parts.values() for n in v if n in self.members]
            images = common.folder_sha256(self.path, names, self.progress)
        part = sha256_file(self.partition_path)
        import hashlib

        return {"path": str(self.path), "partition": str(self.partition_path), "images_sha256": images,
                "partition_sha256": part, "sha256": hashlib.sha256(f"{images} {part}".encode()).hexdigest()}

    def options(self) -> dict:
        return {"resolution": self.resolution, "crop": self.crop, "resample": common.RESAMPLE_NAME}

    def splits(self) -> dict:
        return {s: list(v) for s, v in self.parts.items()}

    def _read(self, name: str) -> bytes:
        if not self.is_zip:
            return (self.path / name).read_bytes()
        if self._zf is None or self._pid != os.getpid():  # one handle per worker process
            self._zf, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zf.read(self.members[name])

    def load(self, split, name):
        key = name.rsplit(".", 1)[0]
        if name not in self.members:
            return key, None, -1
        try:
            im = common.decode_image(self._read(name))
            arr = common.to_square_array(im, self.resolution, 3, self.crop)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError):
            # damaged data, a deflate stream that breaks, an unknown compression method or an
            # "encrypted" flag: a corrupt input, skipped and counted by the writer
            return key, None, -1
        return key, arr, -1


def source(
    source: Path = typer.Option(..., "--source", help="img_align_celeba.zip, img_align_celeba/, or a folder with either."),
    partition: Optional[Path] = typer.Option(None, "--partition", help="list_eval_partition.txt (default: found beside the source)."),
    resolution: int = typer.Option(64, "--resolution", help="Output side in pixels (64 or 128)."),
    crop: int = typer.Option(160, "--crop", help="Centre crop side before resizing (160 of the 178x218 aligned images)."),
    progress: bool = True,
) -> CelebASource:
    """CelebA aligned images + list_eval_partition.txt -> WebDataset shards (train/valid/test)."""
    return CelebASource(source, resolution, crop, partition, progress=progress)


command = options.image_command(source)

def main() -> None:
    from dali_dist.cli_util import run_single

    run_single(command)


if __name__ == "__main__":
    main()
