"""Any folder of images -> shards.

    python -m data_prep.folder --source photos/ --out data/photos --resolution 64
    dali-dist prep folder --source photos/ --out data/photos --test-fraction 0.1 --channels 1

Images (png, jpg, jpeg, bmp, gif, webp, tif, ppm, pgm) are found recursively, in sorted
order. Splits: if the folder has ``train/`` and ``test/`` (or ``val/``, ``valid/``)
sub-folders those are the splits; otherwise a deterministic held-out ``test`` split takes
every image whose relative path hashes (sha256) below ``--test-fraction``, so adding
images never moves existing ones between splits. Labels: when every image sits in a
sub-folder (of the split folder), the sorted sub-folder names are the classes (0, 1, ...);
otherwise labels are -1. Each image is centre-cropped to a square (``--crop`` px, default the
largest square), resized with LANCZOS to ``--resolution`` and converted to ``--channels``.
Keys are the relative paths with every character outside ``[A-Za-z0-9_-/]`` replaced by
``_``. Symlinks that resolve outside the folder are refused; corrupt images are skipped and
counted.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

import typer

from dali_dist.errors import UserError

from . import common, options
from .shards import Source

SPLIT_DIRS = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}


def sanitize_key(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return re.sub(r"[^A-Za-z0-9_/-]", "_", stem).strip("/")


def in_test(rel: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return h < fraction * 2**64


def list_images(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        d = Path(dirpath)
        for name in dirnames:
            if (d / name).is_symlink():
                common.check_inside(root, d / name)
        for name in sorted(filenames):
            p = d / name
            if p.suffix.lower() in common.IMAGE_EXTS:
                if p.is_symlink():
                    common.check_inside(root, p)
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


class FolderSource(Source):
    dataset = "folder"
    kind = "image"

    def __init__(self, source: Path, resolution: int = 64, channels: int = 3, crop: Optional[int] = None,
                 test_fraction: float = 0.05, progress: bool = True):
        root = common.require_exists(Path(source))
        if not root.is_dir():
            raise UserError(f"{root}: --source must be a folder of images")
        if channels not in (1, 3):
            raise UserError(f"--channels must be 1 or 3, got {channels}")
        if not 0.0 <= test_fraction < 1.0:
            raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction}")
        if resolution < 1 or (crop is not None and crop < 1):
            raise UserError("--resolution and --crop must be >= 1")
        self.root, self.resolution, self.channels, self.crop = root, resolution, channels, crop
        self.test_fraction, self.progress = test_fraction, progress
        files = list_images(root)
        if not files:
            raise UserError(f"{root}: no images found ({', '.join(common.IMAGE_EXTS)})")
        self.files = files
        top = {f.split("/", 1)[0] for f in files if "/" in f}
        split_dirs = {d: SPLIT_DIRS[d.lower()] for d in top if d.lower() in SPLIT_DIRS}
        self.split_mode = "folders" if {"train", "test"} <= set(split_dirs.values()) else "hash"
        by_split: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}  # (rel path, path inside split)
        if self.split_mode == "folders":
            for f in files:
                head, _, rest = f.partition("/")
                if rest and head in split_dirs:
                    by_split[split_dirs[head]].append((f, rest))
        else:
            for f in files:
                by_split["test" if in_test(f, test_fraction) else "train"].append((f, f))
        # Classes: the first folder level under the split root, when every image has one.
        inner = [r for v in by_split.values() for _, r in v]
        if inner and all("/" in r for r in inner):
            self.classes = sorted({r.split("/", 1)[0] for r in inner})
            index = {c: i for i, c in enumerate(self.classes)}
            self.items = {s: [(f, index[r.split("/", 1)[0]]) for f, r in v] for s, v in by_split.items() if v}
        else:
            self.classes = None
            self.items = {s: [(f, -1) for f, _ in v] for s, v in by_split.items() if v}
        self.num_classes = len(self.classes) if self.classes else None
        keys = [sanitize_key(f) for f in files]
        self.keys = dict(zip(files, keys))
        if len(set(keys)) != len(keys):  # e.g. a.png and a.jpg: keep both, distinguished by index
            self.keys = {f: f"{k}_{i:07d}" for i, (f, k) in enumerate(zip(files, keys))}

    def source_info(self) -> dict:
        return {"path": str(self.root), "files": len(self.files),
                "sha256": common.folder_sha256(self.root, self.files, self.progress)}

    def options(self) -> dict:
        return {"resolution": self.resolution, "channels": self.channels, "crop": self.crop,
                "test_fraction": self.test_fraction if self.split_mode == "hash" else None,
                "split_mode": self.split_mode, "classes": self.classes, "resample": common.RESAMPLE_NAME}

    def splits(self) -> dict:
        return {s: list(v) for s, v in self.items.items()}

    def load(self, split, item):
        rel, label = item
        key = self.keys[rel]
        try:
            im = common.decode_image((self.root / rel).read_bytes())
            return key, common.to_square_array(im, self.resolution, self.channels, self.crop), label
        except (ValueError, OSError):
            return key, None, label


def source(
    source: Path = typer.Option(..., "--source", help="Folder of images (optionally train/ and test/ sub-folders, class sub-folders)."),
    resolution: int = typer.Option(64, "--resolution", help="Output side in pixels."),
    channels: int = typer.Option(3, "--channels", help="1 (grey) or 3 (RGB)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Centre crop side before resizing (default: the largest square)."),
    test_fraction: float = typer.Option(0.05, "--test-fraction", help="Held-out share when there are no train/ test/ folders."),
    progress: bool = True,
) -> FolderSource:
    """A folder of images -> WebDataset shards (train/test)."""
    return FolderSource(source, resolution, channels, crop, test_fraction, progress=progress)


command = options.image_command(source)

def main() -> None:
    from dali_dist.cli_util import run_single

    run_single(command)


if __name__ == "__main__":
    main()
