"""DALI on the 25-Gaussian grid over several seeds (paper Table 2), through the real CLI.

    python benchmarks/grid2d.py                          # 5 seeds, the grid2d preset
    python benchmarks/grid2d.py --seeds 0 1 --set train.steps=5000 --out /tmp/g.json

Each seed is one `dali-dist train` process followed by `dali-dist evaluate --metrics modes`
(2,500 samples, docs/design.md, 'Metric protocols'). Prints a table (modes captured, % high quality, train
wall time, ms/step) and writes JSON with every number and the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_seed(seed: int, run_root: Path, overrides: list[str], threads: int, name: str | None = None) -> dict:
    run_dir = run_root / (name or f"seed-{seed}")  # every run of a benchmark shares run_root/mlflow.db
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    sets = [a for s in [f"train.seed={seed}", *overrides] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "dali_dist.cli", "train", "--config", "grid2d", "--run-dir", str(run_dir), *sets]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
    process_s = time.perf_counter() - start
    out = run_dir / "metrics.json"
    subprocess.run([sys.executable, "-m", "dali_dist.cli", "evaluate", "--run-dir", str(run_dir),
                    "--metrics", "modes", "--out", str(out), "--overwrite"], check=True, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads(out.read_text())
    last = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
    return {
        "seed": seed,
        "modes_captured": metrics["modes_captured"],
        "high_quality_pct": metrics["high_quality_pct"],
        "train_s": last["elapsed_s"],
        "process_s": process_s,
        "ms_per_step": 1000 * last["elapsed_s"] / metrics["step"],
        "steps": metrics["step"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, repeatable")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    ap.add_argument("--run-root", type=Path, default=REPO / "runs" / "bench-grid2d")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "grid2d.json")
    args = ap.parse_args()

    rows = []
    print(f"{'seed':>4} {'modes':>5} {'HQ %':>6} {'train s':>8} {'ms/step':>8}", flush=True)
    for seed in args.seeds:
        r = run_seed(seed, args.run_root, args.overrides, args.threads)
        rows.append(r)
        print(f"{r['seed']:>4} {r['modes_captured']:>5} {r['high_quality_pct']:>6.2f} {r['train_s']:>8.1f} {r['ms_per_step']:>8.2f}", flush=True)
    hq = [r["high_quality_pct"] for r in rows]
    modes = [r["modes_captured"] for r in rows]
    summary = {
        "modes_mean": statistics.mean(modes), "modes_min": min(modes),
        "high_quality_mean": statistics.mean(hq), "high_quality_std": statistics.stdev(hq) if len(hq) > 1 else 0.0,
        "train_s_mean": statistics.mean(r["train_s"] for r in rows),
        "train_s_max": max(r["train_s"] for r in rows),
    }
    print(f"mean {summary['modes_mean']:>5.1f} {summary['high_quality_mean']:>6.2f} ± {summary['high_quality_std']:.2f}"
          f"  (min modes {summary['modes_min']}, max train {summary['train_s_max']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "overrides": args.overrides, "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seeds": rows, "summary": summary,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
