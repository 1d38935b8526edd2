"""Paper Table 1 side by side: every variant on one image set, one budget, several seeds, then
the evaluation job (reconstruction MSE and its round trip on G's own samples, Inception score,
FID, KID) and the latent-space measures, a curve of fid_classifier against step, and the sample and reconstruction grids of
every variant side by side.

    python benchmarks/table1.py                                   # Fashion-MNIST, 6,000 steps, seeds 0 1
    python benchmarks/table1.py --steps 6000 --seeds 0 --set train.mixed_precision=bf16
    python benchmarks/table1.py --report-only                     # tables and pictures from finished runs
    python benchmarks/table1.py --dataset cifar10 --data /shards/cifar10 --steps 100000   # on a GPU

Fashion-MNIST: shards are made once from /usr/share/datasets/fashion-mnist (apt-get install
dataset-fashion-mnist); the Inception score, ``fid_classifier`` and ``kid_classifier`` use the
project's classifier (the paper's protocol for MNIST-like sets: an MNIST classifier instead
of ImageNet Inception). CIFAR-10: ImageNet Inception (pass --inception-weights or set
DALI_DIST_INCEPTION_WEIGHTS) for ``fid``, ``kid`` and ``is``.

Every variant trains through the same `dali-dist train` with only model.variant and the seed
changed, keeps a checkpoint every --curve-every steps, and logs to the MLflow store at
<run-root>/mlflow.db. A run whose final checkpoint exists is not trained again (so a killed
benchmark resumes, and --report-only redraws). Reference rows: real test images scored like
generated ones (the ceiling for IS, the floor for fid/kid) and raw pixels for the probe and
k-NN. Writes benchmarks/results/table1.json (per-seed numbers and the command; --out names it),
table1_curve.png, table1_grids.png and, with several seeds, table1_bands.png (mean over seeds
with a best-to-worst band; all named after --out). Besides each metric at the last step, the
table has every run's fid averaged over its last --late checkpoints (default 3): one checkpoint
moves by up to 1 fid_classifier on its own. --include adds an earlier JSON's
per-seed results for runs not on this machine (same --steps and --set only); the grids then
show, and their file name lists, only the variants whose run directories are here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
FASHION = Path("/usr/share/datasets/fashion-mnist")

PAPER = {  # Table 1: MNIST MSE, MNIST IS, CIFAR-10 MSE, CIFAR-10 IS, CIFAR-10 FID
    "dali": (0.026, 9.483, 0.019, 6.450, 28.4),
    "dali-l2": (0.028, 9.331, 0.037, 6.324, 29.2),
    "gan": (None, 9.464, None, 6.287, 37.1),
    "ali": (0.480, 8.749, 0.672, 5.930, 58.9),
}
COLUMNS = ["mse", "cycle_mse", "latent_mse", "inception_score", "fid_classifier", "kid_classifier", "probe_accuracy", "knn_accuracy", "train_s"]


def cli(*args: str, threads: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "dali_dist.cli", *args], check=True, env=env)


def finished(run_dir: Path, steps: int) -> bool:
    from dali_dist.checkpoint import complete_checkpoints

    return any(step == steps for step, _ in complete_checkpoints(run_dir))


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


def real_test_reference(data: str, seed: int) -> dict:
    """Real test images through the same protocol as generated ones: IS under the classifier,
    fid_classifier and kid_classifier against the train split (what a perfect G would score,
    up to the test/train difference)."""
    from dali_dist.classifier import default_classifier_path
    from dali_dist.data import describe
    from dali_dist.metrics.extractors import ClassifierExtractor
    from dali_dist.metrics.features import dataset_features
    from dali_dist.metrics.fid import frechet_distance, gaussian_stats, kernel_distance
    from dali_dist.metrics.inception import inception_score
    from dali_dist.metrics.ranks import Ranks

    ranks, info = Ranks("cpu"), describe(data)
    ext = {"classifier": ClassifierExtractor(default_classifier_path(data), ranks.device)}
    rows = {s: dataset_features(data, s, ext, batch_size=500, ranks=ranks, progress=False, total=info.splits[s])["classifier"]
            for s in ("train", "test")}
    (tr, _), (te, te_logits) = rows["train"], rows["test"]
    return {"inception_score": inception_score(te_logits)[0],
            "fid_classifier": frechet_distance(gaussian_stats(te), gaussian_stats(tr)),
            "kid_classifier": kernel_distance(te, tr, seed)}


def include_results(path: Path, per_seed: dict, curves: dict, steps: int, overrides: list[str]) -> dict:
    """Adds an earlier table's per-seed results for every (variant, seed) not present yet;
    returns where they came from and which ("variant/seed"). Refused unless the budget and
    overrides are the same."""
    earlier = json.loads(path.read_text())
    if earlier.get("steps") != steps or sorted(earlier.get("overrides", [])) != sorted(overrides):
        raise SystemExit(f"error: {path}: trained with --steps {earlier.get('steps')} and --set "
                         f"{earlier.get('overrides')}, not this table's {steps} and {overrides}")
    added = []
    for variant, seeds in earlier.get("per_seed", {}).items():
        for seed, result in seeds.items():
            if seed in per_seed.get(variant, {}):
                continue
            per_seed.setdefault(variant, {})[seed] = result
            curves[(variant, int(seed))] = [(int(s), v) for s, v in result.get("curve", {}).items()]
            added.append(f"{variant}/{seed}")
    return {"from_command": earlier.get("command"), "measured": earlier.get("measured"), "runs": added}


def late_mean(curve: list[tuple[int, float]], last: int) -> float | None:
    """The mean over a run's ``last`` latest checkpoints: one checkpoint of a GAN moves by up to
    1 fid_classifier on its own, so orderings read from one checkpoint do not last."""
    points = sorted(curve)[-last:]
    return statistics.mean(v for _, v in points) if len(points) == last else None


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


SEED_STYLES = ("-", "--", ":", "-.")
VARIANT_COLORS = {"dali": "tab:blue", "dali-l2": "tab:cyan", "gan": "tab:orange", "ali": "tab:red"}


def _draw_panels(curves: dict, mse_curves: dict | None, out: Path, steps_per_epoch: int, titles: tuple, plot,
                 fid_key: str = "fid_classifier") -> None:
    """The frame both curve figures share: ``fid_key`` on a log axis and, where runs recorded
    it, the test-set reconstruction MSE beside it; ``plot(ax, series)`` draws the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mse_curves = {k: v for k, v in (mse_curves or {}).items() if v}
    panels = [(curves, f"{fid_key} (lower is better)", titles[0], True)]
    if mse_curves:
        panels.append((mse_curves, "reconstruction MSE on the test split", titles[1], False))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), dpi=120, squeeze=False)
    for ax, (series, ylabel, title, log) in zip(axes[0], panels):
        plot(ax, series)
        ax.set_xlabel(f"training step (batch 100; {steps_per_epoch} steps = 1 epoch)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def draw_curve(curves: dict, out: Path, steps_per_epoch: int, mse_curves: dict | None = None,
               dataset: str = "Fashion-MNIST", fid_key: str = "fid_classifier") -> None:
    """fid against step per variant and seed; beside it, where runs recorded it, the test-set
    reconstruction MSE against step."""
    def plot(ax, series):
        for (variant, seed), points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", color=VARIANT_COLORS.get(variant), alpha=0.9 if seed == 0 else 0.5,
                    linestyle=SEED_STYLES[seed % len(SEED_STYLES)], label=f"{variant} (seed {seed})")

    space = "the classifier's" if fid_key == "fid_classifier" else "Inception's"
    _draw_panels(curves, mse_curves, out, steps_per_epoch, plot=plot, fid_key=fid_key,
                 titles=(f"{dataset}: FID in {space} feature space during training",
                         f"{dataset}: reconstruction error during training"))


def draw_seed_bands(curves: dict, out: Path, steps_per_epoch: int, mse_curves: dict | None = None,
                    dataset: str = "Fashion-MNIST", fid_key: str = "fid_classifier") -> None:
    """Like draw_curve, one line per variant: the mean over seeds at each step, with a band from
    the best to the worst seed. With several seeds this reads better than a line per seed, and
    shows how far one checkpoint of one seed can stray from the others."""
    def plot(ax, series):
        by_variant: dict = {}
        for (variant, seed), points in series.items():
            for step, value in points:
                by_variant.setdefault(variant, {}).setdefault(step, []).append(value)
        for variant, steps in sorted(by_variant.items()):
            xs = sorted(steps)
            seeds = max(len(steps[x]) for x in xs)
            ax.plot(xs, [sum(steps[x]) / len(steps[x]) for x in xs], marker="o", color=VARIANT_COLORS.get(variant),
                    label=f"{variant} (mean of {seeds} seeds)")
            ax.fill_between(xs, [min(steps[x]) for x in xs], [max(steps[x]) for x in xs],
                            color=VARIANT_COLORS.get(variant), alpha=0.15, linewidth=0)

    title = f"{dataset}: mean over seeds, band from best to worst seed"
    _draw_panels(curves, mse_curves, out, steps_per_epoch, plot=plot, titles=(title, title), fid_key=fid_key)


def draw_grids(runs: dict, steps: int, out: Path) -> None:
    """One row per variant: its fixed-z samples, then test images beside their reconstructions."""
    from PIL import Image, ImageDraw

    tiles = []
    for variant, run_dir in runs.items():
        images = run_dir / "images"
        samples = images / f"samples-{steps:07d}.png"
        recon = images / f"recon-{steps:07d}.png"
        parts = [Image.open(p).convert("RGB") for p in (samples, recon) if p.is_file()]
        if parts:
            tiles.append((variant, parts))
    if not tiles:
        return
    scale, label_h, gap = 2, 24, 12
    width = max(sum(p.width * scale for p in parts) + gap * (len(parts) - 1) for _, parts in tiles)
    heights = [label_h + max(p.height for p in parts) * scale for _, parts in tiles]
    canvas = Image.new("RGB", (width, sum(heights) + gap * len(tiles)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (variant, parts), h in zip(tiles, heights):
        what = "samples (left)" + (", test images and reconstructions in column pairs (right)" if len(parts) > 1 else "")
        draw.text((4, y + 4), f"{variant}, step {steps}: {what}", fill="black")
        x = 0
        for p in parts:
            canvas.paste(p.resize((p.width * scale, p.height * scale), Image.NEAREST), (x, y + label_h))
            x += p.width * scale + gap
        y += h + gap
    canvas.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["fashion-mnist", "cifar10"], default="fashion-mnist")
    ap.add_argument("--data", help="shard directory (default for fashion-mnist: made from the Debian package)")
    ap.add_argument("--variants", nargs="+", default=["dali", "dali-l2", "gan", "ali"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=6000, help="the same training budget for every variant")
    ap.add_argument("--curve-every", type=int, default=1000, help="steps between kept checkpoints (the curve)")
    ap.add_argument("--num-samples", type=int, default=10000, help="generated samples for is / fid / kid")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inception-weights", help="clean-fid's inception-2015-12-05.pt (cifar10)")
    ap.add_argument("--run-root", type=Path, default=REPO / "runs" / "bench-table1")
    ap.add_argument("--late", type=int, default=3, help="also report each run's mean fid over its last LATE "
                    "kept checkpoints (column fid_classifier_late / fid_late)")
    ap.add_argument("--report-only", action="store_true", help="evaluate and report finished runs; train nothing")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "table1.json")
    ap.add_argument("--include", type=Path, help="an earlier table1 JSON whose per-seed results (numbers and curves) "
                    "join the table for every variant and seed not run or found here (e.g. runs trained on another machine)")
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
    grey = args.dataset == "fashion-mnist"
    config = "mnist" if grey else "cifar10"
    extra = ["--inception-weights", args.inception_weights] if args.inception_weights else []
    fid_key = "fid_classifier" if grey else "fid"

    per_seed: dict = {}
    curves: dict = {}
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = args.run_root / f"seed-{seed}" / variant
            if not finished(run_dir, args.steps):
                if args.report_only:
                    print(f"{variant} seed {seed}: not finished, left out", flush=True)
                    continue
                sets = [f"model.variant={variant}", f"train.seed={seed}", f"train.steps={args.steps}",
                        f"name={variant}", f"train.checkpoint_every={args.curve_every}",
                        f"train.keep_every={args.curve_every}", *args.overrides]
                resume = ["--resume", "auto"] if (run_dir / "checkpoints").is_dir() else []
                cli("train", "--config", config, "--data", data, "--run-dir", str(run_dir),
                    *[a for s in sets for a in ("--set", s)], *resume, threads=args.threads)
            metrics = "is,kid" if grey else "fid,is,kid"
            metrics += ",mse,cycle,probe,knn" if variant != "gan" else ""
            out = run_dir / "metrics.json"
            cli("evaluate", "--run-dir", str(run_dir), "--metrics", metrics, "--num-samples", str(args.num_samples),
                "--out", str(out), "--no-progress", "--overwrite", *extra, threads=args.threads)
            result = json.loads(out.read_text())
            last = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
            result["train_s"] = last["elapsed_s"]
            # the curve: every kept checkpoint, same protocol (recorded values are reused)
            curve_out = run_dir / "curve.json"
            curve_metrics = ("is" if grey else "fid") + (",mse" if variant != "gan" else "")
            cli("evaluate", "--run-dir", str(run_dir), "--all-checkpoints", "--metrics", curve_metrics,
                "--num-samples", str(args.num_samples), "--out", str(curve_out), "--no-progress", "--overwrite", *extra,
                threads=args.threads)
            history = json.loads(curve_out.read_text()).get("history", [])
            curves[(variant, seed)] = [(h["step"], h[fid_key]) for h in history if fid_key in h]
            result["curve"] = {str(s): v for s, v in curves[(variant, seed)]}
            if variant != "gan":
                result["curve_mse"] = {str(h["step"]): h["mse"] for h in history if "mse" in h}
            per_seed.setdefault(variant, {})[str(seed)] = result
            print(f"{variant} seed {seed}: " + json.dumps({k: round(v, 5) for k, v in result.items()
                                                           if k in COLUMNS or k == "fid"}), flush=True)

    included = include_results(args.include, per_seed, curves, args.steps, args.overrides) if args.include else None
    late_key = f"{fid_key}_late"
    for (variant, seed), curve in curves.items():
        late = late_mean(curve, args.late)
        if late is not None:
            per_seed[variant][str(seed)][late_key] = late

    # the reference rows depend on the data only: computed once per run root and shards
    from dali_dist.data import describe

    ref_cache = args.run_root / "reference.json"
    key = describe(data).manifest_sha256 or data
    cached = json.loads(ref_cache.read_text()) if ref_cache.is_file() else {}
    if cached.get("data") == key:
        reference = cached["reference"]
    else:
        reference = {"real test images": real_test_reference(data, seed=12345) if grey else {},
                     "raw pixels": raw_pixel_baseline(data)}
        args.run_root.mkdir(parents=True, exist_ok=True)
        ref_cache.write_text(json.dumps({"data": key, "reference": reference}, indent=2))

    cols = COLUMNS if grey else ["mse", "cycle_mse", "latent_mse", "inception_score", "fid", "kid", "probe_accuracy", "knn_accuracy", "train_s"]
    cols = [*cols[:cols.index(fid_key) + 1], late_key, *cols[cols.index(fid_key) + 1:]]
    print(f"\n{args.dataset}, {args.steps} steps, seeds {args.seeds} (mean ± std over seeds; "
          f"{late_key}: mean over each seed's last {args.late} checkpoints)\n")
    print("| variant | seeds | " + " | ".join(cols) + " | paper MSE | paper IS |")
    print("|---" * (len(cols) + 4) + "|")
    for v, seeds in per_seed.items():
        p = PAPER.get(v, (None,) * 5)
        pm, pi = (p[0], p[1]) if grey else (p[2], p[3])
        cells = [mean_std([r[c] for r in seeds.values() if isinstance(r.get(c), (int, float))]) for c in cols]
        print(f"| {v} | {len(seeds)} | " + " | ".join(cells) + f" | {pm if pm is not None else '-'} | {pi if pi is not None else '-'} |")
    for name, r in reference.items():
        print(f"| {name} | - | " + " | ".join(f"{r[c]:.4g}" if c in r else "-" for c in cols) + " | - | - |")

    def mean_of(v, c):
        vals = [r[c] for r in per_seed.get(v, {}).values() if c in r]
        return statistics.mean(vals) if vals else None

    if mean_of("dali", "mse") and mean_of("ali", "mse"):
        print(f"\nDALI / ALI reconstruction MSE: {mean_of('dali', 'mse') / mean_of('ali', 'mse'):.3f} here, "
              f"{(0.026 / 0.480 if grey else 0.019 / 0.672):.3f} in the paper")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # pictures are named after --out (table1.json -> table1_curve.png, table1_grids.png)
    if curves:
        mse_curves = {(v, int(seed)): [(int(s), m) for s, m in r.get("curve_mse", {}).items()]
                      for v, seeds in per_seed.items() for seed, r in seeds.items()}
        figure = {"steps_per_epoch": 600 if grey else 500, "mse_curves": mse_curves,
                  "dataset": "Fashion-MNIST" if grey else "CIFAR-10", "fid_key": fid_key}
        draw_curve(curves, args.out.with_name(f"{args.out.stem}_curve.png"), **figure)
        if len({seed for _, seed in curves}) > 1:  # a line per seed gets hard to read: mean and spread
            draw_seed_bands(curves, args.out.with_name(f"{args.out.stem}_bands.png"), **figure)
    # grids need the run directories: included variants have none here, so the picture names
    # the variants it shows instead of passing for the whole table
    drawn = [v for v in per_seed if (args.run_root / f"seed-{args.seeds[0]}" / v).is_dir()]
    suffix = "" if drawn == list(per_seed) else "_" + "_".join(drawn)
    draw_grids({v: args.run_root / f"seed-{args.seeds[0]}" / v for v in drawn}, args.steps,
               args.out.with_name(f"{args.out.stem}_grids{suffix}.png"))
    record = {
        "command": " ".join(["python", "benchmarks/table1.py", *sys.argv[1:]]), "dataset": args.dataset,
        "steps": args.steps, "seeds": args.seeds, "overrides": args.overrides, "late_checkpoints": args.late,
        "per_seed": per_seed,
        "reference": reference, "measured": time.strftime("%Y-%m-%d")}
    if included:
        record["included"] = included
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
