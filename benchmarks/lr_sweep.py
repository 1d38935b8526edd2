"""The learning rate for a CPU budget: DALI and ALI on Fashion-MNIST with one Adam rate for G,
D and E (the mnist preset otherwise unchanged), at one short equal budget, then the Inception
score, fid_classifier and reconstruction MSE of each, and the rate that ranks best over the
variants.

    python benchmarks/lr_sweep.py                                   # 2e-5 1e-4 2e-4 4e-4, 1,000 steps
    python benchmarks/lr_sweep.py --set train.mixed_precision=bf16 --preset-runs RUN_ROOT/seed-0

Why: the authors' rate (2e-5) was set for 300 epochs; a CPU affords 10-30. The rate is chosen
once, for every variant alike (so no variant gets a rate tuned for it): the one with the best
mean rank of fid_classifier over the variants. --preset-runs points at a directory holding
<variant>/ runs of table1.py with the same seed; a run whose saved config (RUN_DIR/config.yaml)
has one rate for G, D and E that is in --rates stands in, at its checkpoint at --steps, for that
rate's row (the schedule, lr/sqrt(epoch+1), depends on the epoch, not on the total steps, so
the first N steps of a longer run are this sweep's N steps). Writes benchmarks/results/lr_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.table1 import cli  # noqa: E402  (one way to call the CLI for every benchmark)



def run_rate(run_dir: Path, seed: int) -> float | None:
    """The one Adam rate a finished run used for G, D and E, read from its own saved config
    (not assumed from the preset, which may have changed since), or None when the run is
    missing, trained another seed or gave the networks different rates."""
    from dali_dist.config import config_from_dict, read_saved_config
    from dali_dist.schedule import learning_rate_plan

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    cfg = config_from_dict(read_saved_config(path))
    rates = {rate for groups in learning_rate_plan(cfg, has_encoder=True).values() for rate, _ in groups}
    return rates.pop() if len(rates) == 1 and cfg.train.seed == seed else None


def checkpoint_at(run_dir: Path, steps: int) -> Path | None:
    from dali_dist.checkpoint import complete_checkpoints

    return dict(complete_checkpoints(run_dir)).get(steps) if run_dir.is_dir() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "fashion-mnist-raw"), help="Fashion-MNIST shards")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rates", nargs="+", type=float, default=[2e-5, 1e-4, 2e-4, 4e-4])
    ap.add_argument("--variants", nargs="+", default=["dali", "ali"])
    ap.add_argument("--preset-runs", type=Path, help="<variant>/ runs of table1.py (same seed) to reuse for the rate they trained at")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    ap.add_argument("--num-samples", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run-root", type=Path, default=REPO / "runs" / "bench-lr")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lr_sweep.json")
    args = ap.parse_args()

    rows: dict[str, dict[str, dict]] = {}
    for lr in args.rates:
        for variant in args.variants:
            run_dir = args.run_root / variant / f"lr-{lr:g}"
            ckpt = checkpoint_at(run_dir, args.steps)
            if ckpt is None and args.preset_runs and run_rate(args.preset_runs / variant, args.seed) == lr:
                ckpt = checkpoint_at(args.preset_runs / variant, args.steps)
            if ckpt is None:
                sets = [f"model.variant={variant}", f"train.seed={args.seed}", f"train.steps={args.steps}",
                        f"name=lr-{variant}-{lr:g}", *(f"optim.lr_{n}={lr}" for n in "gde"), *args.overrides]
                resume = ["--resume", "auto"] if (run_dir / "checkpoints").is_dir() else []
                t0 = time.perf_counter()
                cli("train", "--config", "mnist", "--data", args.data, "--run-dir", str(run_dir),
                    *[a for s in sets for a in ("--set", s)], *resume, threads=args.threads)
                print(f"{variant} lr {lr:g}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
                ckpt = checkpoint_at(run_dir, args.steps)
            out = args.run_root / f"metrics-{variant}-lr-{lr:g}-{args.steps}.json"
            if not out.is_file():
                cli("evaluate", "--checkpoint", str(ckpt), "--metrics", "is,mse", "--num-samples",
                    str(args.num_samples), "--out", str(out), "--no-progress", threads=args.threads)
            rows.setdefault(f"{lr:g}", {})[variant] = {"checkpoint": str(ckpt), **json.loads(out.read_text())}

    # one rate for all: the best mean rank of fid_classifier over the variants
    ranks: dict[str, list[int]] = {lr: [] for lr in rows}
    for variant in args.variants:
        order = sorted(rows, key=lambda lr: rows[lr][variant]["fid_classifier"])
        for rank, lr in enumerate(order, start=1):
            ranks[lr].append(rank)
    mean_rank = {lr: statistics.mean(r) for lr, r in ranks.items()}
    chosen = min(mean_rank, key=lambda lr: (mean_rank[lr], -float(lr)))  # a tie goes to the higher rate

    print(f"\nFashion-MNIST, mnist preset, one Adam rate for G, D and E, {args.steps} steps, seed {args.seed}\n")
    head = " | ".join(f"{v} IS | {v} fid_classifier | {v} MSE" for v in args.variants)
    print(f"| lr | {head} | mean rank |")
    print("|---|" + "---|" * (3 * len(args.variants) + 1))
    for lr, by_variant in rows.items():
        cells = " | ".join(f"{r['inception_score']:.2f} | {r['fid_classifier']:.2f} | {r['mse']:.4f}"
                           for r in (by_variant[v] for v in args.variants))
        print(f"| {lr}{' (chosen)' if lr == chosen else ''} | {cells} | {mean_rank[lr]:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", "benchmarks/lr_sweep.py", *sys.argv[1:]]),
                                    "steps": args.steps, "seed": args.seed, "overrides": args.overrides,
                                    "chosen": chosen, "mean_rank": mean_rank, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
