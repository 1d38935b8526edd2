"""Data-path speed: sharding, loading and decoding (issue 3; docs/design.md, 'Shard encodings').

    python benchmarks/data.py                      # full run, ~3-5 min on 2 cores
    python benchmarks/data.py --quick              # smaller inputs, ~1 min
    python benchmarks/data.py --workers 4 --out benchmarks/results/data.json

Prints a table and writes JSON. Measures, on this machine:
* sharding images/s per source (`dali-dist prep` with --workers N): real Fashion-MNIST
  (Debian package dataset-fashion-mnist) and synthetic inputs in the official CIFAR-10 and
  CelebA formats, a folder of PNGs, and the 2D grid;
* loader images/s: the shard loader (PNG and raw uint8 encodings) against a plain per-file
  PNG ``torch.utils.data.Dataset`` over the same images, same batch size and worker count,
  side by side in one run, at 28 px (Fashion-MNIST) and 64 px;
* decode images/s on one core (bytes in memory -> uint8 batch), 32 and 64 px;
* tar readers side by side (--tar-only runs just this): ours, webdataset's own pipeline and
  Python's tarfile over the same Fashion-MNIST shards;
* what the trainer consumes for the 28 px model (a DCGAN-28 DALI step on this CPU).
Synthetic images are built from Fashion-MNIST garments (upscaled, coloured) so PNG
compression behaves roughly like on real photos, not like on noise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dali_dist.data import TrainStream, decode_batch  # noqa: E402
from dali_dist.shard_reader import iter_shard_samples  # noqa: E402
from data_prep.celeba import CelebASource  # noqa: E402
from data_prep.cifar10 import Cifar10Source  # noqa: E402
from data_prep.folder import FolderSource  # noqa: E402
from data_prep.grid2d import Grid2DSource  # noqa: E402
from data_prep.mnist import IMAGES_MAGIC, MnistSource, read_idx  # noqa: E402
from data_prep.shards import build  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------ inputs


def garments(n: int) -> np.ndarray:
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        x = read_idx(FASHION / "train-images-idx3-ubyte.gz", IMAGES_MAGIC)
    else:  # fall back to smooth random blobs
        rng = np.random.default_rng(0)
        x = (rng.random((1000, 7, 7)) * 255).astype(np.uint8).repeat(4, 1).repeat(4, 2)
    return x[np.arange(n) % len(x)]


def coloured(g: np.ndarray, w: int, h: int, i: int) -> np.ndarray:
    a = np.asarray(Image.fromarray(g).resize((w, h), Image.Resampling.BILINEAR)).astype(np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([a, (a * 3 // 4 + xx * (i % 5 + 1)) % 256, (a // 2 + yy * 2 + i) % 256], -1)
    return rgb.clip(0, 255).astype(np.uint8)


def make_cifar_archive(dest: Path, n_train: int, n_test: int) -> Path:
    import pickle

    path = dest / "cifar-10-python.tar.gz"
    if path.exists():
        return path
    dest.mkdir(parents=True, exist_ok=True)
    g = garments(n_train + n_test)
    imgs = np.stack([coloured(g[i], 32, 32, i) for i in range(len(g))])
    rows = imgs.transpose(0, 3, 1, 2).reshape(len(g), 3072)
    labels = (np.arange(len(g)) % 10).tolist()
    per = n_train // 5
    parts = {f"data_batch_{b + 1}": (rows[b * per:(b + 1) * per], labels[b * per:(b + 1) * per]) for b in range(5)}
    parts["test_batch"] = (rows[n_train:], labels[n_train:])
    with tarfile.open(path, "w:gz") as tf:
        for name, (d, lab) in parts.items():
            blob = pickle.dumps({b"data": d, b"labels": lab, b"filenames": [b"x.png"] * len(lab)}, protocol=2)
            ti = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            ti.size = len(blob)
            tf.addfile(ti, io.BytesIO(blob))
    return path


def make_celeba_zip(dest: Path, n: int) -> Path:
    import zipfile

    path = dest / "img_align_celeba.zip"
    if path.exists():
        return path
    dest.mkdir(parents=True, exist_ok=True)
    g = garments(n)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(coloured(g[i], 178, 218, i)).save(buf, format="JPEG", quality=90)
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", buf.getvalue())
    (dest / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {0 if i < n * 0.8 else 1 if i < n * 0.9 else 2}\n"
                                                          for i in range(n)))
    return path


def make_png_folder(dest: Path, imgs: np.ndarray) -> Path:
    if dest.exists() and len(list(dest.iterdir())) == len(imgs):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(imgs):
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(dest / f"{i:06d}.png")
    return dest


# ------------------------------------------------------------------------------------------ measurements


def timed_build(src, out: Path, workers: int, encoding: str = "png", shard_size: int = 5000) -> dict:
    t = time.perf_counter()
    m = build(src, out, shard_size=shard_size, workers=workers, encoding=encoding, force=True, progress=False)
    dt = time.perf_counter() - t
    n = sum(v["count"] for v in m["splits"].values())
    size = sum(sh["size"] for v in m["splits"].values() for sh in v["shards"])
    return {"items": n, "seconds": dt, "per_s": n / dt, "bytes_per_item": size / n}


class PerFilePNG(torch.utils.data.Dataset):
    """The baseline: one PNG file per sample, decoded with PIL in __getitem__."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.iterdir())

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            a = np.asarray(im)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0), 0


def _worker_init(_):
    torch.set_num_threads(1)


def loader_rate(kind: str, source, batch: int, workers: int, n_images: int) -> float:
    """Images/s after the first batch (worker start-up excluded)."""
    if kind == "per-file PNG Dataset":
        dl = torch.utils.data.DataLoader(PerFilePNG(source), batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, worker_init_fn=_worker_init,
                                         persistent_workers=workers > 0)
        def gen():
            while True:
                yield from dl
        it = gen()
    else:
        it = TrainStream(source, batch_size=batch, seed=0, num_workers=workers).batches()
    next(it)
    n = 0
    t = time.perf_counter()
    while n < n_images:
        x, _ = next(it)
        float(x.numpy().sum())  # read every byte, as a copy to the GPU would (numpy: one thread)
        n += len(x)
    return n / (time.perf_counter() - t)


def decode_rate(shard_dir: Path, shape: tuple, n_images: int, batch: int = 100) -> float:
    """One core: encoded bytes already in memory -> uint8 (N, C, H, W)."""
    recs = []
    for p in sorted((shard_dir / "train").glob("shard-*.tar")):
        for s in iter_shard_samples(str(p)):
            ext = next(e for e in s if e not in ("__key__", "cls"))
            recs.append((s["__key__"], (ext, s[ext]), 0))
            if len(recs) >= n_images:
                break
        if len(recs) >= n_images:
            break
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, len(recs), batch):
            decode_batch(recs[i:i + batch], shape, "bench")
        best = max(best, len(recs) / (time.perf_counter() - t))
    torch.set_num_threads(threads)
    return best


def trainer_rate(shards: Path, batch: int = 100, steps: int = 8) -> dict:
    """Images/s that one DALI step of the 28 px DCGAN consumes on this CPU (alternating order)."""
    try:
        from dali_dist.algorithm import DaliStep, Networks
        from dali_dist.config import load_config
        from dali_dist.models import build_models

        cfg = load_config("mnist", [], data=str(shards))
        G, D, E = build_models(cfg)
        nets = Networks(G, D, E, torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)),
                        torch.optim.Adam(list(G.parameters()) + list(E.parameters()), 2e-4, betas=(0.5, 0.999)))
        step = DaliStep(nets, variant="dali", lambda_e=1 / cfg.model.latent_dim, update_order="alternating")
        x = torch.rand(batch, 1, 28, 28) * 2 - 1
        zs = [torch.randn(batch, cfg.model.latent_dim) for _ in range(2)]
        step([x], zs)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step([x], zs)
            times.append(time.perf_counter() - t)
        dt = float(np.median(times))
        return {"images_per_s": batch / dt, "step_s": dt, "torch_threads": torch.get_num_threads(), "batch": batch}
    except Exception as exc:  # the trainer is another module; report rather than fail
        return {"images_per_s": None, "error": f"{type(exc).__name__}: {exc}"}


# ------------------------------------------------------------------------------------------ main


def tar_reader_rates(shard_dir: Path, repeats: int) -> dict:
    """Samples/s of three tar readers over the same shards, one process, best of ``repeats``:
    ours (dali_dist/shard_reader.py), webdataset's own pipeline (its tar expander and key
    grouping, no decoding), and Python's tarfile (members only, no grouping)."""
    import webdataset as wds

    files = sorted(str(p) for p in (shard_dir / "train").glob("*.tar"))

    def ours():
        return sum(1 for f in files for _ in iter_shard_samples(f))

    def webdataset_pipeline():
        return sum(1 for _ in wds.WebDataset(files, shardshuffle=False, empty_check=False))

    def python_tarfile():
        n = 0
        for f in files:
            with tarfile.open(f) as tf:
                for m in tf:
                    if m.isreg():
                        tf.extractfile(m).read()
                        n += m.name.endswith((".pgm", ".ppm", ".png"))
        return n

    rates: dict = {}
    for _ in range(repeats):  # interleaved, best kept (a shared machine only ever slows a run)
        for name, fn in (("ours", ours), ("webdataset", webdataset_pipeline), ("tarfile", python_tarfile)):
            t0 = time.perf_counter()
            n = fn()
            rates.setdefault(name, []).append(n / (time.perf_counter() - t0))
    return {name: max(v) for name, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="prep and loader workers")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dali-dist-bench-data"), help="scratch folder")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data.json")
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    ap.add_argument("--repeats", type=int, default=3, help="loader measurements per case (best kept)")
    ap.add_argument("--tar-only", action="store_true", help="only the tar readers side by side (Fashion-MNIST raw shards)")
    args = ap.parse_args()
    if args.tar_only:
        shards = args.work / "fm-raw"
        if not (shards / "manifest.json").is_file():
            timed_build(MnistSource(FASHION), shards, args.workers, "raw", 10000)
        rates = tar_reader_rates(shards, args.repeats)
        print(f"| tar reader, one process, best of {args.repeats} (Fashion-MNIST raw shards, 60k samples) | samples/s |")
        print("|---|---:|")
        for name, r in rates.items():
            print(f"| {name} | {r:,.0f} |")
        out = args.out.with_name("data_tar_readers.json")
        out.write_text(json.dumps({"command": "python benchmarks/data.py --tar-only", "samples_per_s": rates}, indent=1) + "\n")
        print(f"\nwrote {out}", file=sys.stderr)
        return
    W, work = args.workers, args.work
    work.mkdir(parents=True, exist_ok=True)
    q = args.quick
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                             "platform": platform.platform()}, "workers": W, "quick": q}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    # -- inputs
    log("building inputs ...")
    n_c, n_cel, n_fold = (4000, 500, 1000) if q else (12000, 2000, 4000)
    cifar = make_cifar_archive(work / f"cifar-{n_c}", n_c * 5 // 6, n_c // 6)
    celeba = make_celeba_zip(work / f"celeba-{n_cel}", n_cel)
    g64 = garments(n_fold)
    folder64 = make_png_folder(work / f"png64-{n_fold}", np.stack([coloured(g64[i], 64, 64, i) for i in range(n_fold)]))
    has_fashion = (FASHION / "train-images-idx3-ubyte.gz").exists()

    # -- sharding
    log("sharding ...")
    prep = {}
    if has_fashion:
        prep["mnist (Fashion-MNIST 70k) png"] = timed_build(MnistSource(FASHION), work / "fm-png", W, "png", 10000)
        prep["mnist (Fashion-MNIST 70k) raw"] = timed_build(MnistSource(FASHION), work / "fm-raw", W, "raw", 10000)
    prep[f"cifar10 ({n_c}, 32 px) png"] = timed_build(Cifar10Source(cifar), work / "c-png", W, "png")
    prep[f"cifar10 ({n_c}, 32 px) raw"] = timed_build(Cifar10Source(cifar), work / "c-raw", W, "raw")
    prep[f"celeba ({n_cel} jpg -> 64 px) png"] = timed_build(CelebASource(celeba, progress=False), work / "cel-png", W, "png", 1000)
    prep[f"folder ({n_fold} png, 64 px) png"] = timed_build(FolderSource(folder64, test_fraction=0, progress=False), work / "f64-png", W, "png", 1000)
    prep[f"folder ({n_fold} png, 64 px) raw"] = timed_build(FolderSource(folder64, test_fraction=0, progress=False), work / "f64-raw", W, "raw", 1000)
    prep["grid2d (110k points)"] = timed_build(Grid2DSource(), work / "grid", W, "npy", 10000)
    res["sharding"] = prep

    # -- decode per core
    log("decoding ...")
    dec = {}
    nd = 3000 if q else 10000
    for label, d, shape in (("32 px RGB", "c", (3, 32, 32)), ("64 px RGB", "f64", (3, 64, 64))):
        for enc in ("raw", "png"):
            dec[f"{label} {enc}"] = decode_rate(work / f"{d}-{enc}", shape, min(nd, n_fold if d == "f64" else nd))
    res["decode_per_core"] = dec

    # -- loaders, side by side
    log("loading ...")
    load = {}
    n_load = 10000 if q else 30000
    cases = []
    if has_fashion:
        x28 = read_idx(FASHION / "train-images-idx3-ubyte.gz", IMAGES_MAGIC)[: (10000 if q else 20000)]
        folder28 = make_png_folder(work / f"png28-{len(x28)}", x28[:, :, :, None])
        cases.append(("28 px grey (Fashion-MNIST)", 100, {"shards PNG": work / "fm-png", "shards raw": work / "fm-raw",
                                                          "per-file PNG Dataset": folder28}))
    cases.append(("64 px RGB", 64, {"shards PNG": work / "f64-png", "shards raw": work / "f64-raw",
                                     "per-file PNG Dataset": folder64}))
    # Interleaved repeats, best kept: the machine may be shared, and a throughput is only
    # ever lowered by interference.
    runs: dict = {}
    for _ in range(args.repeats):
        for label, batch, srcs in cases:
            for kind, src in srcs.items():
                runs.setdefault(f"{label} | {kind}", []).append(loader_rate(kind, src, batch, W, n_load))
    load = {k: max(v) for k, v in runs.items()}
    res["loader"] = load
    res["loader_runs"] = runs
    if has_fashion:
        log("tar readers ...")
        res["tar_readers_samples_per_s"] = tar_reader_rates(work / "fm-raw", args.repeats)

    # -- the trainer's appetite at 28 px
    log("trainer step ...")
    res["trainer_28px"] = trainer_rate(work / "fm-raw") if has_fashion else {"images_per_s": None}

    # -- report
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# data path, {os.cpu_count()} CPU(s), workers={W}{' (quick)' if q else ''}", "",
             "| sharding (dali-dist prep) | items | s | items/s | bytes/item |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['items']} | {v['seconds']:.1f} | {v['per_s']:,.0f} | {v['bytes_per_item']:,.0f} |" for k, v in prep.items()]
    lines += ["", f"| loader, {W} workers, float32 batches, best of {args.repeats} | source | images/s |", "|---|---|---:|"]
    lines += [f"| {k.split(' | ')[0]} | {k.split(' | ')[1]} | {v:,.0f} |" for k, v in load.items()]
    if "tar_readers_samples_per_s" in res:
        lines += ["", "| tar reader, one process (Fashion-MNIST raw shards) | samples/s |", "|---|---:|"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in res["tar_readers_samples_per_s"].items()]
    lines += ["", "| decode on one core (bytes -> uint8 batch) | images/s |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in dec.items()]
    tr = res["trainer_28px"]
    if tr.get("images_per_s"):
        lines += ["", f"trainer, DCGAN-28 DALI step on this CPU ({tr['torch_threads']} threads, batch {tr['batch']}): "
                  f"{tr['images_per_s']:,.0f} images/s"]
        best28 = max((v for k, v in load.items() if k.startswith("28 px") and "shards" in k), default=None)
        if best28:
            lines.append(f"loader / trainer at 28 px: {best28 / tr['images_per_s']:,.1f}x")
    else:
        lines += ["", f"trainer rate not measured: {tr.get('error', 'no Fashion-MNIST')}"]
    print("\n".join(lines))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
