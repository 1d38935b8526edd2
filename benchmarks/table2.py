"""Paper Table 2 side by side: every variant on the 25-Gaussian grid, same budget in steps.

    python benchmarks/table2.py                                  # all variants, 5 seeds
    python benchmarks/table2.py --variants dali gan --seeds 0 1 --set train.steps=5000

Each (variant, seed) is one `dali-dist train` + `dali-dist evaluate --metrics modes` through
benchmarks/grid2d.py's runner, with the grid2d preset and only model.variant changed, so the
networks, data, optimiser and step budget are identical. Runs log to the MLflow store at
<run-root>/mlflow.db, so `mlflow ui` shows the comparison. Prints modes captured and % high
quality (mean and spread over seeds) and wall time per variant; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from grid2d import run_seed  # noqa: E402  (the same runner as the DALI benchmark)

PAPER = {  # Table 2: modes (max 25), % high-quality samples
    "gan": (3.3, 0.5), "ali": (15.84, 1.6), "dali": (25, 81.1), "dali-f": (25, 66.4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["dali", "dali-l2", "dali-f", "gan", "ali"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once (each is its own process; wall times then share the machine)")
    ap.add_argument("--run-root", type=Path, default=HERE.parent / "runs" / "bench-table2")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "table2.json")
    args = ap.parse_args()

    jobs = [(v, s) for v in args.variants for s in args.seeds]
    done: dict = {}
    partial = args.out.with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)

    def one(vs):
        variant, seed = vs
        try:
            row = run_seed(seed, args.run_root, [f"model.variant={variant}", f"name={variant}-s{seed}", *args.overrides],
                           args.threads, name=f"{variant}-seed-{seed}")
            print(f"{variant} seed {seed}: {row['modes_captured']} modes, {row['high_quality_pct']:.1f} % HQ", flush=True)
        except subprocess.CalledProcessError as exc:  # e.g. exit 1: diverged (train.max_nonfinite)
            row = {"seed": seed, "failed": f"exit code {exc.returncode}"}
            print(f"{variant} seed {seed}: FAILED ({row['failed']})", flush=True)
        done[vs] = row  # each finished run is kept at once: a long benchmark cut short loses nothing
        partial.write_text(json.dumps({f"{v}/{s}": r for (v, s), r in done.items()}, indent=2))
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, jobs))
    results = {}
    for variant in args.variants:
        rows = [done[(variant, seed)] for seed in args.seeds if "failed" not in done[(variant, seed)]]
        failed = [done[(variant, seed)] for seed in args.seeds if "failed" in done[(variant, seed)]]
        if not rows:
            results[variant] = {"seeds": failed, "failed_seeds": len(failed)}
            print(f"{variant:>8}: every seed failed")
            continue
        modes = [r["modes_captured"] for r in rows]
        hq = [r["high_quality_pct"] for r in rows]
        results[variant] = {
            "seeds": rows,
            "modes_mean": statistics.mean(modes), "modes_std": statistics.pstdev(modes),
            "hq_mean": statistics.mean(hq), "hq_std": statistics.pstdev(hq),
            "train_s_mean": statistics.mean(r["train_s"] for r in rows),
            "failed_seeds": len(failed), "seeds_failed": failed,
        }
        r = results[variant]
        print(f"{variant:>8}: modes {r['modes_mean']:.1f} ± {r['modes_std']:.1f}   HQ {r['hq_mean']:.1f} ± {r['hq_std']:.1f} %"
              f"   {r['train_s_mean']:.0f} s/seed   (paper: {PAPER.get(variant, ('-', '-'))})", flush=True)
    print("\n| variant | modes (max 25) | % high quality | failed seeds | train s/seed | paper modes | paper HQ % |\n"
          "|---|---|---|---|---|---|---|")
    for v, r in results.items():
        pm, ph = PAPER.get(v, ("-", "-"))
        if "modes_mean" not in r:
            print(f"| {v} | - | - | {r['failed_seeds']} | - | {pm} | {ph} |")
            continue
        print(f"| {v} | {r['modes_mean']:.1f} ± {r['modes_std']:.1f} | {r['hq_mean']:.1f} ± {r['hq_std']:.1f} | "
              f"{r['failed_seeds']} | {r['train_s_mean']:.0f} | {pm} | {ph} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "overrides": args.overrides,
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
