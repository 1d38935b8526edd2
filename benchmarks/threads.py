"""Two trainings on the same cores: per-step time alone and side by side, per thread setting.

    python benchmarks/threads.py                          # grid2d preset, 600 steps per run
    python benchmarks/threads.py --config mnist --data data/fashion-mnist-raw --steps 60

Each scenario starts one or two `dali-dist train` processes at the same moment with the
environment it names, and reads each run's per-step time from RUN_DIR/stats.jsonl (the mean
over its log ticks after the first, so start-up is left out). Scenarios:

- ``torch default``: what a plain PyTorch process does (one thread per core of the machine,
  OpenMP's default wait policy). ``DALI_DIST_THREADS=torch`` keeps the trainer from choosing.
- ``dali-dist``: the trainer's own choice: threads from its usable cores
  (``dali_dist/threads.py``) and passive OpenMP waiting (``dali_dist/__init__.py``).
- ``OMP_NUM_THREADS=1``: the user's explicit setting, which the trainer respects.

Prints a table and writes JSON (``benchmarks/results/threads.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SCENARIOS = {
    "torch default": {"DALI_DIST_THREADS": "torch"},
    "dali-dist": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def start(run_dir: Path, args, env_extra: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DALI_DIST_THREADS")}
    env.update({"PYTHONPATH": str(REPO), **env_extra})
    cmd = [sys.executable, "-m", "dali_dist.cli", "train", "--config", args.config, "--run-dir", str(run_dir),
           "--set", f"train.steps={args.steps}", "--set", f"train.log_every={args.log_every}",
           "--set", "train.sample_every=0", "--set", f"train.checkpoint_every={args.steps}",
           "--set", "tracking.enabled=false", "--set", "train.export_bn_batches=0"]
    if args.data:
        cmd += ["--data", args.data, "--set", "data.num_workers=0"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ms_per_step(run_dir: Path, batch: int) -> float:
    records = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records[1:]] or [records[-1]["images_per_s"]]
    return 1000 * batch / statistics.mean(rates)


def run_scenario(name: str, env_extra: dict, n_runs: int, args) -> list[float]:
    dirs = [args.run_root / f"{name.replace(' ', '_').replace('=', '')}-{n_runs}-{i}" for i in range(n_runs)]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    procs = [start(d, args, env_extra) for d in dirs]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a training run of scenario {name!r} failed (exit {p.returncode})")
    batch = json.loads(json.dumps(__import__("yaml").safe_load((dirs[0] / "config.yaml").read_text())))["train"]["batch_size"]
    return [ms_per_step(d, batch) for d in dirs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="grid2d")
    ap.add_argument("--data", help="shard directory for image presets")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--run-root", type=Path, default=REPO / "runs" / "bench-threads")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "threads.json")
    args = ap.parse_args()

    rows = []
    for name in args.scenarios:
        alone = run_scenario(name, SCENARIOS[name], 1, args)[0]
        pair = run_scenario(name, SCENARIOS[name], 2, args)
        rows.append({"scenario": name, "env": SCENARIOS[name], "alone_ms": alone, "concurrent_ms": pair,
                     "slowdown": statistics.mean(pair) / alone})
        print(f"{name}: alone {alone:.1f} ms/step, two at once {pair[0]:.1f} / {pair[1]:.1f} ms/step", flush=True)

    print(f"\n{args.config}, {args.steps} steps per run, {os.cpu_count()} cores\n")
    print("| threads | alone ms/step | two at once ms/step (each) | slowdown |")
    print("|---|---|---|---|")
    for r in rows:
        pair = " / ".join(f"{v:.1f}" for v in r["concurrent_ms"])
        print(f"| {r['scenario']} | {r['alone_ms']:.1f} | {pair} | {r['slowdown']:.1f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "config": args.config, "steps": args.steps,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
