"""Paper Table 1 side by side: every variant on one image set, one budget, then the
evaluation job (reconstruction MSE, Inception score, FID) and the latent-space measures.

    python benchmarks/table1.py                                    # Fashion-MNIST (Debian package)
    python benchmarks/table1.py --steps 3000 --variants dali ali gan
    python benchmarks/table1.py --dataset cifar10 --data /shards/cifar10 --steps 100000   # on a GPU

Fashion-MNIST: shards are made once from /usr/share/datasets/fashion-mnist (apt-get install
dataset-fashion-mnist); the Inception score and `fid_classifier` use the project's own
classifier (the paper's protocol for MNIST-like sets). CIFAR-10: ImageNet Inception (pass
--inception-weights or set DALI_DIST_INCEPTION_WEIGHTS) for `fid` and `is`.

Every variant trains through the same `dali-dist train` with only model.variant changed, and
logs to the MLflow store at <run-root>/mlflow.db, so the MLflow UI shows the comparison. A
raw-pixel row gives the probe / k-NN baseline. Prints a table with the paper's numbers and
ratios between variants (Fashion-MNIST is not MNIST: compare ratios, not absolute values).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")

PAPER = {  # Table 1: MNIST MSE, MNIST IS, CIFAR-10 MSE, CIFAR-10 IS, CIFAR-10 FID
    "dali": (0.026, 9.483, 0.019, 6.450, 28.4),
    "dali-l2": (0.028, 9.331, 0.037, 6.324, 29.2),
    "gan": (None, 9.464, None, 6.287, 37.1),
    "ali": (0.480, 8.749, 0.672, 5.930, 58.9),
}


def cli(*args: str, threads: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "dali_dist.cli", *args], check=True, env=env)


def raw_pixel_baseline(data: str) -> dict:
    """Probe and k-NN accuracy on flattened pixels: what the codes must beat."""
    from dali_dist.data import eval_batches
    from dali_dist.metrics.latent import knn_accuracy, linear_probe_accuracy

    def load(split):
        xs, ys = zip(*[(x.flatten(1).numpy(), y.numpy()) for x, y, _ in eval_batches(data, split=split, batch_size=1000)])
        return np.concatenate(xs), np.concatenate(ys)

    tr, ytr = load("train")
    te, yte = load("test")
    return {"probe_accuracy": linear_probe_accuracy(tr, ytr, te, yte), "knn_accuracy": knn_accuracy(tr, ytr, te, yte, k=5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["fashion-mnist", "cifar10"], default="fashion-mnist")
    ap.add_argument("--data", help="shard directory (default for fashion-mnist: made from the Debian package)")
    ap.add_argument("--variants", nargs="+", default=["dali", "dali-l2", "gan", "ali"])
    ap.add_argument("--steps", type=int, default=3000, help="the same training budget for every variant")
    ap.add_argument("--num-samples", type=int, default=10000, help="generated samples for is / fid")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inception-weights", help="clean-fid's inception-2015-12-05.pt (cifar10)")
    ap.add_argument("--run-root", type=Path, default=REPO / "runs" / "bench-table1")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "table1.json")
    args = ap.parse_args()

    data = args.data
    if data is None:
        if args.dataset != "fashion-mnist":
            ap.error("--data is required for cifar10")
        data = str(REPO / "data" / "fashion-mnist-raw")
        if not Path(data, "manifest.json").is_file():
            if not FASHION.is_dir():
                ap.error(f"{FASHION} not found: apt-get install dataset-fashion-mnist, or pass --data")
            cli("prep", "mnist", "--source", str(FASHION), "--out", data, "--encoding", "raw", threads=args.threads)
    config = "mnist" if args.dataset == "fashion-mnist" else "cifar10"
    gen_metrics = "is" if args.dataset == "fashion-mnist" else "fid,is"
    extra = ["--inception-weights", args.inception_weights] if args.inception_weights else []

    results: dict = {}
    for variant in args.variants:
        run_dir = args.run_root / variant
        sets = [f"model.variant={variant}", f"train.steps={args.steps}", f"name={variant}", *args.overrides]
        t0 = time.perf_counter()
        resume = ["--resume", "auto"] if (run_dir / "checkpoints").is_dir() else []
        cli("train", "--config", config, "--data", data, "--run-dir", str(run_dir),
            *[a for s in sets for a in ("--set", s)], *resume, threads=args.threads)
        train_s = time.perf_counter() - t0
        metrics = gen_metrics + (",mse,probe,knn" if variant != "gan" else "")
        out = run_dir / "metrics.json"
        cli("evaluate", "--run-dir", str(run_dir), "--metrics", metrics, "--num-samples", str(args.num_samples),
            "--out", str(out), *extra, threads=args.threads)
        results[variant] = {**json.loads(out.read_text()), "train_s": train_s}
        print(f"{variant}: {json.dumps({k: v for k, v in results[variant].items() if isinstance(v, float)})}", flush=True)
    results["raw pixels"] = raw_pixel_baseline(data)

    cols = ["mse", "mse_std", "inception_score", "fid_classifier" if args.dataset == "fashion-mnist" else "fid",
            "probe_accuracy", "knn_accuracy", "train_s"]
    print("\n| variant | " + " | ".join(cols) + " | paper MSE | paper IS |")
    print("|---" * (len(cols) + 3) + "|")
    for v, r in results.items():
        p = PAPER.get(v, (None,) * 5)
        pm, pi = (p[0], p[1]) if args.dataset == "fashion-mnist" else (p[2], p[3])
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), (int, float)) else "-" for c in cols]
        print(f"| {v} | " + " | ".join(cells) + f" | {pm if pm is not None else '-'} | {pi if pi is not None else '-'} |")
    if "dali" in results and "ali" in results and "mse" in results["ali"]:
        ours = results["dali"]["mse"] / results["ali"]["mse"] - 1
        paper = (0.026 / 0.480 if args.dataset == "fashion-mnist" else 0.019 / 0.672) - 1
        print(f"\nDALI vs ALI reconstruction MSE: {100 * ours:+.0f} % here, {100 * paper:+.0f} % in the paper")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "dataset": args.dataset, "data": data,
                                    "steps": args.steps, "overrides": args.overrides, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
