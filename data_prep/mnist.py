"""MNIST-format idx files (MNIST, Fashion-MNIST) -> shards.

    python -m data_prep.mnist --source /usr/share/datasets/fashion-mnist --out data/fmnist
    dali-dist prep mnist --source DIR --out DIR [--resolution 28] [--encoding png|raw]

``--source`` is a folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).
Splits: train (60,000) and test (10,000), labels 0-9, one channel. Keys are the image's
index in its idx file (``00042``). ``--resolution`` other than 28 resizes with LANCZOS.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import typer

from dali_dist.errors import UserError

from . import common, options
from .shards import Source

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803 (uint8, 3 dims), 0x00000801 (uint8, 1 dim)


def find_file(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise UserError(f"{root}: missing {stem}[.gz] (an MNIST-format folder needs train-* and t10k-* idx files)")


# Far above any MNIST-format set (EMNIST by_class, the largest, is about 0.55 GB of pixels): a
# header claiming more is garbage or a decompression bomb, refused before anything is read.
MAX_IDX_BYTES = 4 << 30


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (gzip or not) as a uint8 array; checks the magic number and the size.

    Reads exactly what the header announces (plus one byte to detect extra data), never the
    whole decompressed stream, so a small gzip cannot expand into all of memory."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or int.from_bytes(header, "big") != magic:
                data = header + f.read(4)
            else:
                header += f.read(4 * header[3])
                data = None
            if data is None:
                ndim = header[3]
                if len(header) < 4 + 4 * ndim:
                    data = header
                else:
                    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
                    need = math.prod(dims)  # exact: numpy's int64 product wraps; a crafted header can wrap to 0
                    if need > MAX_IDX_BYTES:
                        raise UserError(f"{path}: its header ({'x'.join(map(str, dims))}) claims {need} bytes, more than "
                                        f"an MNIST-format file holds ({MAX_IDX_BYTES >> 30} GiB at most): not an idx file")
                    data = header + f.read(need + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: truncated or corrupt gzip ({exc})") from None
    if len(data) < 8:
        raise UserError(f"{path}: too short for an idx file ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise UserError(f"{path}: not an idx {'image' if magic == IMAGES_MAGIC else 'label'} file "
                        f"(magic number {got:#010x}, expected {magic:#010x})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    need = math.prod(dims)
    if len(data) - start != need:
        more = len(data) - start > need
        raise UserError(f"{path}: holds {'more than ' + str(need) if more else len(data) - start} data bytes, "
                        f"its header ({'x'.join(map(str, dims))}) says {need}" + ("" if more else " (truncated)"))
    return np.frombuffer(data, np.uint8, offset=start).reshape(dims)


class MnistSource(Source):
    kind = "image"
    channels = 1
    num_classes = 10

    def __init__(self, root: Path, resolution: int = 28, name: str | None = None):
        root = common.require_exists(Path(root))
        if not root.is_dir():
            raise UserError(f"{root}: --source must be the folder holding the idx files")
        if resolution < 1:
            raise UserError(f"--resolution must be >= 1, got {resolution}")
        self.root, self.resolution = root, resolution
        self.dataset = name or ("fashion-mnist" if "fashion" in str(root.resolve()).lower() else "mnist")
        self.files = {s: (find_file(root, a), find_file(root, b)) for s, (a, b) in FILES.items()}
        self.data = {}
        for split, (fi, fl) in self.files.items():
            x, y = read_idx(fi, IMAGES_MAGIC), read_idx(fl, LABELS_MAGIC)
            if x.ndim != 3:
                raise UserError(f"{fi}: images must have 3 dimensions, found {x.ndim}")
            if y.ndim != 1:
                raise UserError(f"{fl}: labels must have 1 dimension, found {y.ndim}")
            if len(x) != len(y):
                raise UserError(f"{fl}: {len(y)} labels for {len(x)} images in {fi.name}")
            if y.size and y.max() > 9:
                raise UserError(f"{fl}: label {int(y.max())} is not in 0-9")
            self.data[split] = (x, y)

    def source_info(self) -> dict:
        paths = [p for pair in self.files.values() for p in pair]
        digest, per = common.combined_sha256(paths)
        return {"path": str(self.root), "sha256": digest, "files": per}

    def options(self) -> dict:
        return {"resolution": self.resolution, "resample": common.RESAMPLE_NAME, "name": self.dataset}

    def splits(self) -> dict:
        return {s: list(range(len(x))) for s, (x, _) in self.data.items()}

    def load(self, split, i):
        x, y = self.data[split]
        return f"{i:05d}", common.resize_array(x[i][:, :, None], self.resolution), int(y[i])


def source(
    source: Path = typer.Option(..., "--source", help="Folder with train-*/t10k-* idx files (gzip or not)."),
    resolution: int = typer.Option(28, "--resolution", help="Side in pixels (28 keeps the originals; else LANCZOS resize)."),
    name: str = typer.Option(None, "--name", help="Dataset name in the manifest: mnist or fashion-mnist (default: guessed from the path)."),
) -> MnistSource:
    """MNIST-format idx files (MNIST, Fashion-MNIST) -> WebDataset shards."""
    if name is not None and name not in ("mnist", "fashion-mnist"):
        raise UserError(f"--name must be mnist or fashion-mnist, got {name!r}")
    return MnistSource(source, resolution, name)


command = options.image_command(source)

def main() -> None:
    from dali_dist.cli_util import run_single

    run_single(command)


if __name__ == "__main__":
    main()
