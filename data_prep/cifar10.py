"""CIFAR-10 (the official python release) -> shards.

    python -m data_prep.cifar10 --source cifar-10-python.tar.gz --out data/cifar10
    dali-dist prep cifar10 --source cifar-10-batches-py/ --out data/cifar10 [--encoding raw]
    dali-dist prep cifar10 --download --source downloads/ --out data/cifar10

``--source``: ``cifar-10-python.tar.gz``, the extracted ``cifar-10-batches-py/`` folder, or a
folder holding either. The batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) are
pickled dicts with ``data`` (N x 3072 uint8, channel-major RGB), ``labels`` and
``filenames``; ``batches.meta`` names the classes. They are read with a restricted unpickler
(plain containers and numpy arrays only: a pickle from an untrusted archive cannot run
code). Splits: train 50,000 (batches 1-5 in order) and test 10,000; keys are the index in
that order (``00042``). ``--download`` fetches the official archive into ``--source`` where
the network allows and checks its published md5.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import urllib.request
from pathlib import Path

import numpy as np
import typer

from dali_dist.errors import UserError

from . import common, options
from .shards import Source

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_batch(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure means "not a CIFAR batch"
        raise UserError(f"{where}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a CIFAR-10 python batch (a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _array(v, name: str, where: str) -> np.ndarray:
    try:
        return np.asarray(v)
    except (ValueError, TypeError):  # ragged lists, objects numpy cannot stack
        raise UserError(f"{where}: {name!r} is not an array or a flat list") from None


_NOT_INTEGERS = {"U": "strings", "S": "bytes", "f": "floats", "c": "complex numbers", "b": "booleans", "O": "objects"}


def _labels(v, n: int, where: str) -> np.ndarray:
    """One integer label 0-9 per image. Strings, floats (NaN too), booleans and other objects
    are refused, not converted: a float label would be truncated into a wrong class."""
    y = _array(v, "labels", where)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{where}: {len(y) if y.ndim == 1 else 'no flat list of'} labels for {n} images")
    if n and y.dtype.kind not in "iu":
        raise UserError(f"{where}: labels must be integers 0-9, found {_NOT_INTEGERS.get(y.dtype.kind, y.dtype.name)}")
    if n and (y.min() < 0 or y.max() > 9):
        raise UserError(f"{where}: labels must be 0-9, found {int(y.min())}..{int(y.max())}")
    return y


def _check_batch(b: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in b or "labels" not in b:
        raise UserError(f"{where}: batch lacks 'data' or 'labels' (keys: {sorted(map(str, b))})")
    x = _array(b["data"], "data", where)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise UserError(f"{where}: 'data' must be N x 3072 uint8, found {x.shape} {x.dtype}")
    y = _labels(b["labels"], len(x), where)
    # channel-major rows (R plane, G plane, B plane, each 32x32 row-major) -> N x 32 x 32 x 3
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def locate(source: Path) -> Path:
    """The archive or the batches folder named by (or inside) ``source``."""
    if source.is_file():
        return source
    if source.is_dir():
        if (source / "data_batch_1").exists() or (source / "test_batch").exists():
            return source
        for cand in (source / FOLDER, source / ARCHIVE):
            if cand.exists():
                return cand
        raise UserError(f"{source}: no {ARCHIVE} or {FOLDER}/ here (use --download to fetch it)")
    raise UserError(f"{source}: no such file or directory")


def read_batches(path: Path) -> dict[str, bytes]:
    names = TRAIN_BATCHES + TEST_BATCHES
    out: dict[str, bytes] = {}
    if path.is_dir():
        for n in names:
            p = path / n
            if not p.is_file():
                raise UserError(f"{p}: missing (a CIFAR-10 python folder has data_batch_1..5 and test_batch)")
            if p.is_symlink():
                common.check_inside(path, p)
            out[n] = p.read_bytes()
        return out
    with common.open_tar(path) as tf:
        members = common.check_tar_members(path, tf)
        by_name = {Path(m.name).name: m for m in members if m.isfile()}
        for n in names:
            if n not in by_name:
                raise UserError(f"{path}: archive lacks {FOLDER}/{n} (not the CIFAR-10 python release, or truncated)")
            out[n] = common.read_tar_member(path, tf, by_name[n])
    return out


class Cifar10Source(Source):
    dataset = "cifar10"
    kind = "image"
    channels = 3
    num_classes = 10

    def __init__(self, source: Path, resolution: int = 32):
        if resolution < 1:
            raise UserError(f"--resolution must be >= 1, got {resolution}")
        self.path = locate(Path(source))
        self.resolution = resolution
        raw = read_batches(self.path)
        self._sha = hashlib.sha256()
        for n in TRAIN_BATCHES + TEST_BATCHES:  # content checksum, the same for archive and folder
            self._sha.update(hashlib.sha256(raw[n]).hexdigest().encode() + b" " + n.encode() + b"\n")
        self.data = {}
        for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
            xs, ys = zip(*(_check_batch(load_batch(raw[n], f"{self.path}:{n}"), f"{self.path}:{n}") for n in names))
            self.data[split] = (np.concatenate(xs), np.concatenate(ys))

    def source_info(self) -> dict:
        info = {"path": str(self.path), "sha256": self._sha.hexdigest(), "checksum_of": "the six batch files"}
        if self.path.is_file():
            info["archive_md5"] = _md5(self.path)
        return info

    def options(self) -> dict:
        return {"resolution": self.resolution, "resample": common.RESAMPLE_NAME}

    def splits(self) -> dict:
        return {s: list(range(len(x))) for s, (x, _) in self.data.items()}

    def load(self, split, i):
        x, y = self.data[split]
        return f"{i:05d}", common.resize_array(x[i], self.resolution), int(y[i])


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(dest: Path, url: str = URL, md5: str = MD5, progress: bool = True) -> Path:
    """Fetch the archive to ``dest`` (a folder, or the archive's path), verify its md5, and
    rename it into place only when it matches. An existing file with the right md5 is kept."""
    from tqdm import tqdm

    target = dest / ARCHIVE if (dest.is_dir() or not dest.suffix) else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and _md5(target) == md5:
        return target
    tmp = target.with_name(f".{target.name}.part.{os.getpid()}")
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url}", file=sys.stderr,
                      disable=not progress) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != md5:
            raise UserError(f"{url}: md5 {h.hexdigest()} does not match the published {md5}")
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"{url}: download failed ({getattr(exc, 'reason', None) or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def source(
    source: Path = typer.Option(..., "--source", help="cifar-10-python.tar.gz, cifar-10-batches-py/, or a folder with either."),
    download_: bool = typer.Option(False, "--download", help="Fetch the official archive into --source first (md5-checked)."),
    resolution: int = typer.Option(32, "--resolution", help="Side in pixels (32 keeps the originals; else LANCZOS resize)."),
    progress: bool = True,
) -> Cifar10Source:
    """CIFAR-10 python release -> WebDataset shards (train 50,000 / test 10,000)."""
    if download_:
        source = download(source, progress=progress)
    return Cifar10Source(source, resolution)


command = options.image_command(source)

def main() -> None:
    from dali_dist.cli_util import run_single

    run_single(command)


if __name__ == "__main__":
    main()
