"""Tiny datasets in exactly the official download formats, and an independent shard reader
(Python's tarfile + PIL, sharing no code with dali_dist.data) for the data-prep tests."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


# ------------------------------------------------------------------------------------------
# CIFAR-10 python release: cifar-10-python.tar.gz / cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
# ------------------------------------------------------------------------------------------


def cifar_arrays(per_batch: int = 4, n_test: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist())
    batches["test_batch"] = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), rng.integers(0, 10, n_test).tolist())
    return batches


def _cifar_pickle(name: str, data: np.ndarray, labels: list) -> bytes:
    # The official pickles come from Python 2 (bytes keys when loaded with encoding="bytes").
    d = {b"batch_label": f"{name} of 5".encode(), b"labels": labels, b"data": data,
         b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))]}
    return pickle.dumps(d, protocol=2)


def make_cifar(dest: Path, batches: dict, as_archive: bool = True, extra_members: list | None = None) -> Path:
    files = {n: _cifar_pickle(n, *batches[n]) for n in batches}
    files["batches.meta"] = pickle.dumps({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                                                           b"frog", b"horse", b"ship", b"truck"], b"num_vis": 3072}, protocol=2)
    files["readme.html"] = b"<html></html>"
    if not as_archive:
        folder = dest / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for n, b in files.items():
            (folder / n).write_bytes(b)
        return folder
    path = dest / "cifar-10-python.tar.gz"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        d = tarfile.TarInfo("cifar-10-batches-py")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for n, b in files.items():
            ti = tarfile.TarInfo(f"cifar-10-batches-py/{n}")
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
        for ti, b in extra_members or []:
            tf.addfile(ti, io.BytesIO(b) if b is not None else None)
    return path


def cifar_expected(batches: dict) -> dict:
    """split -> list of (HWC uint8 image, label) in the official order."""
    out = {"train": [], "test": []}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        for n in names:
            data, labels = batches[n]
            for row, lab in zip(data, labels):
                out[split].append((row.reshape(3, 32, 32).transpose(1, 2, 0), lab))
    return out


# ------------------------------------------------------------------------------------------
# CelebA aligned: img_align_celeba.zip (img_align_celeba/000001.jpg ...) + list_eval_partition.txt
# ------------------------------------------------------------------------------------------


def celeba_images(n: int, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    yy, xx = np.mgrid[0:218, 0:178]
    for i in range(1, n + 1):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i * 10) % 256, ((xx + yy) * 2) % 256], -1)
        img = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        out[f"{i:06d}.jpg"] = buf.getvalue()
    return out


def celeba_partition(names: list[str]) -> str:
    # the official pattern: a long train run, then valid, then test
    n = len(names)
    parts = [0] * (n - n // 4 - n // 5) + [1] * (n // 5) + [2] * (n // 4)
    return "".join(f"{name} {p}\n" for name, p in zip(sorted(names), parts))


def make_celeba(dest: Path, images: dict[str, bytes], as_zip: bool = True, partition: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if partition:
        (dest / "list_eval_partition.txt").write_text(celeba_partition(list(images)))
    if as_zip:
        path = dest / "img_align_celeba.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("img_align_celeba/", b"")
            for name, b in images.items():
                zf.writestr(f"img_align_celeba/{name}", b)
        return path
    folder = dest / "img_align_celeba"
    folder.mkdir()
    for name, b in images.items():
        (folder / name).write_bytes(b)
    return folder


def celeba_expected(jpeg: bytes, resolution: int = 64, crop: int = 160) -> np.ndarray:
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    assert (left, top) == ((178 - crop) // 2, (218 - crop) // 2)
    im = im.crop((left, top, left + crop, top + crop)).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(im)


# ------------------------------------------------------------------------------------------
# MNIST idx
# ------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, magic_type: int = 0x08) -> bytes:
    head = bytes([0, 0, magic_type, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def make_mnist(dest: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    data = {"train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train).astype(np.uint8)),
            "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test).astype(np.uint8))}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = data[split]
        for stem, b in ((f"{prefix}-images-idx3-ubyte", idx_bytes(x)), (f"{prefix}-labels-idx1-ubyte", idx_bytes(y))):
            if gz:
                with gzip.GzipFile(dest / (stem + ".gz"), "wb", mtime=0) as f:
                    f.write(b)
            else:
                (dest / stem).write_bytes(b)
    return data


def mnist_shards(root: Path, n_train: int, n_test: int, shard_size: int, encoding: str) -> Path:
    """MNIST-like idx files in root/dl, sharded by prep into root/<encoding> (returned)."""
    from data_prep.mnist import MnistSource
    from data_prep.shards import build

    make_mnist(root / "dl", n_train=n_train, n_test=n_test, gz=False)
    build(MnistSource(root / "dl"), root / encoding, shard_size=shard_size, encoding=encoding, progress=False)
    return root / encoding


def write_tar(path: Path, samples) -> Path:
    """A plain tar of samples [(key, {ext: bytes})], members in the order given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


# ------------------------------------------------------------------------------------------
# Reading shards back, independently of dali_dist.data
# ------------------------------------------------------------------------------------------


def read_shards(root: Path) -> dict:
    """split -> list of (key, HWC uint8 array or (xy, cls) for points, label) in manifest order."""
    m = json.loads((root / "manifest.json").read_text())
    out = {}
    for split, s in m["splits"].items():
        rows = []
        for sh in s["shards"]:
            with tarfile.open(root / sh["name"]) as tf:
                members = tf.getmembers()
                groups: dict[str, dict] = {}
                order = []
                for mem in members:
                    key, ext = mem.name.split(".", 1)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    groups[key][ext] = tf.extractfile(mem).read()
            n = 0
            for key in order:
                g = groups[key]
                if "xy.npy" in g:
                    xy = np.load(io.BytesIO(g["xy.npy"]))
                    cls = np.load(io.BytesIO(g["cls.npy"]))
                    rows.append((key, (xy, cls), None))
                    n += len(xy)
                    continue
                ext = next(e for e in g if e != "cls")
                a = np.asarray(Image.open(io.BytesIO(g[ext])))
                rows.append((key, a[:, :, None] if a.ndim == 2 else a, int(g["cls"])))
                n += 1
            assert n == sh["count"], (sh["name"], n, sh["count"])
        out[split] = rows
    return out
