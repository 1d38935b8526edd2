"""The encoder weight lambda on images: DALI on Fashion-MNIST with lambda = 1/d, 1/(4d), 1/(8d),
a linear ramp from 0, and the larger 4/d and 16/d, at one short equal budget, then the Inception score, fid_classifier
and reconstruction MSE of each.

    python benchmarks/lambda_study.py                             # mnist preset, 1,000 steps each
    python benchmarks/lambda_study.py --steps 3000 --set train.mixed_precision=bf16
    python benchmarks/lambda_study.py --baseline-checkpoint RUN/checkpoints/step-1000   # 1/d from a longer run

Why a short budget: the question is whether the encoder term slows the generator early on
(the encoder fits fast and its gradient through G competes with D's), which shows within the
first epochs. Every setting trains through `dali-dist train` with the same seed, so runs share
their data order and z draws. The 1/d row can reuse a checkpoint of a longer run with the same
seed and schedule (the mnist preset's lr/sqrt(epoch+1) depends on the epoch, not on the total
steps, so its first N steps are this study's N steps). Writes benchmarks/results/lambda_study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

SETTINGS = {  # name -> config overrides; d is the latent size (64 in the mnist preset)
    "1/d": [],
    "1/(4d)": ["model.lambda_e=0.00390625"],
    "1/(8d)": ["model.lambda_e=0.001953125"],
    "ramp 0 -> 1/d over 1 epoch": ["model.lambda_e_ramp_steps=600"],
    # larger weights: does a stronger pull towards an invertible G buy reconstruction?
    "4/d": ["model.lambda_e=0.0625"],
    "16/d": ["model.lambda_e=0.25"],
}


def cli(*args: str, threads: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "dali_dist.cli", *args], check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "fashion-mnist-raw"), help="Fashion-MNIST shards")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--baseline-checkpoint", type=Path, help="use this checkpoint for 1/d instead of training it")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every setting")
    ap.add_argument("--num-samples", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run-root", type=Path, default=REPO / "runs" / "bench-lambda")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lambda_study.json")
    args = ap.parse_args()

    from dali_dist.checkpoint import complete_checkpoints

    rows = {}
    for name in args.settings:
        run_dir = args.run_root / name.replace("/", "_").replace(" ", "").replace(">", "")
        if name == "1/d" and args.baseline_checkpoint:
            ckpt = args.baseline_checkpoint
        else:
            if not any(s == args.steps for s, _ in complete_checkpoints(run_dir)):
                sets = [f"train.seed={args.seed}", f"train.steps={args.steps}", f"name=lambda-{name}",
                        *SETTINGS[name], *args.overrides]
                resume = ["--resume", "auto"] if (run_dir / "checkpoints").is_dir() else []
                t0 = time.perf_counter()
                cli("train", "--config", "mnist", "--data", args.data, "--run-dir", str(run_dir),
                    *[a for s in sets for a in ("--set", s)], *resume, threads=args.threads)
                print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            ckpt = dict(complete_checkpoints(run_dir))[args.steps]
        out = args.run_root / f"metrics-{run_dir.name}.json"
        cli("evaluate", "--checkpoint", str(ckpt), "--metrics", "is,mse", "--num-samples", str(args.num_samples),
            "--out", str(out), "--no-progress", "--overwrite", threads=args.threads)
        rows[name] = {"checkpoint": str(ckpt), **json.loads(out.read_text())}

    print(f"\nDALI on Fashion-MNIST, {args.steps} steps, seed {args.seed}\n")
    print("| lambda | IS (classifier) | fid_classifier | MSE (test) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['inception_score']:.3f} | {r['fid_classifier']:.2f} | {r['mse']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", "benchmarks/lambda_study.py", *sys.argv[1:]]),
                                    "steps": args.steps, "seed": args.seed, "overrides": args.overrides,
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
