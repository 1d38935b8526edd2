"""What the trainer's Algorithm 1 step costs against a plain hand-written loop, per precision.

    python benchmarks/train_step.py                               # mnist preset, fp32 and bf16
    python benchmarks/train_step.py --config cifar10 --precisions no bf16 fp16 --batch 256   # GPU

Both sides run the same networks (build_models), Adam settings, batch and synthetic data on
the same device. "plain" is the loop anyone would write: randn for z, the alternating D and
G+E phases, no checks, no statistics. "trainer" is `dali_dist.trainer.Trainer.step`, the step
a run takes, on a Trainer built as a run builds it (Trainer.build) and fed the synthetic batch:
learning rates set per step, Accelerate-prepared modules, counter-seeded z draws, the per-step
reseed, the per-phase finiteness check (and fp16 scaler) agreed across ranks, statistics summed
on the device and read once per log tick (train.log_every, 100 in the presets).
The two alternate in blocks so machine noise hits both alike; the table gives the median of
the blocks, the trainer/plain ratio, and images/s. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dali_dist.config import load_config  # noqa: E402
from dali_dist.losses import encoder_loss  # noqa: E402
from dali_dist.models import build_models, sample_shape  # noqa: E402
from dali_dist.precision import make_adam  # noqa: E402
from dali_dist.trainer import Trainer  # noqa: E402


def make_cfg(preset: str, precision: str, batch: int, *extra: str):
    sets = [f"train.mixed_precision={precision}", f"train.batch_size={batch}", "tracking.enabled=false", *extra]
    if preset != "grid2d":
        sets.append("data.source=unused")  # synthetic batches: no shards are read
    return load_config(preset, sets)


def nets_and_opts(cfg, device):
    torch.manual_seed(0)
    G, D, E = build_models(cfg)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    G, D, E = G.to(device), D.to(device), E.to(device)
    if cfg.train.compile:  # as the trainer does (train.compile)
        for net in (G, D, E):
            net.compile()
    opt_d = make_adam(D.parameters(), cfg.optim.lr_d, betas, device)  # the trainer's Adam (fused on CUDA and CPU)
    opt_ge = make_adam([*G.parameters(), *E.parameters()], cfg.optim.lr_g, betas, device)
    return G, D, E, opt_d, opt_ge


def plain_step_fn(cfg, device):
    """The textbook loop (DALI, alternating), with torch.amp for bf16/fp16."""
    G, D, E, opt_d, opt_ge = nets_and_opts(cfg, device)
    d, lam = cfg.model.latent_dim, cfg.lambda_e
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    scalers = [torch.amp.GradScaler(device.type, enabled=dtype is torch.float16) for _ in range(2)]

    def step(x):
        n = len(x)
        z = torch.randn(n, d, device=device)
        D.requires_grad_(True), G.requires_grad_(False), E.requires_grad_(False)
        with ctx():
            with torch.no_grad():
                xf = G(z)
            lr_, lf = D(x)[0].float(), D(xf)[0].float()
            loss_d = F.softplus(-lr_).mean() + F.softplus(lf).mean()
        opt_d.zero_grad(set_to_none=True)
        scalers[0].scale(loss_d).backward()
        scalers[0].step(opt_d), scalers[0].update()
        D.requires_grad_(False), G.requires_grad_(True), E.requires_grad_(True)
        z = torch.randn(n, d, device=device)
        with ctx():
            logit, h = D(G(z))
            mu, logvar = E(h)
            loss = F.softplus(-logit.float()).mean() + encoder_loss(z, mu.float(), logvar.float(), lam)
        opt_ge.zero_grad(set_to_none=True)
        scalers[1].scale(loss).backward()
        scalers[1].step(opt_ge), scalers[1].update()
    return step


class SyntheticBatches:
    """The trainer's data interface (batches.DeviceBatches) over one fixed batch: no reading is timed."""

    info = None  # no shards: no provenance to track, no test images for reconstructions
    stream = None
    batches_per_epoch = 1 << 30  # one endless epoch

    def __init__(self, x: torch.Tensor):
        self.x = x

    def start(self, consumed: int):
        while True:
            yield self.x


def trainer_step_fn(cfg, x, run_dir: Path):
    """Trainer.step on a Trainer built as `dali_dist train` builds it; x comes through its data."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer.build(cfg, run_dir, data=SyntheticBatches(x))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the trainer's stop handler would only set a flag here

    def step(_x):
        trainer.step()
        if trainer.state.step % cfg.train.log_every == 0:  # the tick's one device-to-host read
            trainer.read_tick()
    step.updates = trainer.updates  # skipped-step counts for the table
    return step


def timed(step, x, n, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mnist", help="preset whose networks to time (grid2d, mnist, cifar10, celeba)")
    ap.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5, help="alternating blocks per side")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--zero2", action="store_true", help="also time the DeepSpeed ZeRO-2 trainer step (fp32/bf16)")
    ap.add_argument("--compile", action="store_true", help="also time the trainer step with train.compile=true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_step.json")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    work = Path(tempfile.mkdtemp(prefix="train_step-"))  # the trainers' run directories (config.yaml only)
    rows = []
    for precision in args.precisions:
        if precision == "fp16" and device.type != "cuda":
            print("fp16: skipped (needs a GPU)")
            continue
        cfg = make_cfg(args.config, precision, args.batch or load_config(args.config, ["data.source=unused"]
                                                                          if args.config != "grid2d" else []).train.batch_size)
        batch = cfg.train.batch_size
        x = torch.rand(batch, *sample_shape(cfg), device=device) * 2 - 1
        sides = {"plain": plain_step_fn(cfg, device), "trainer": trainer_step_fn(cfg, x, work / f"{precision}-trainer")}
        if args.zero2 and precision != "fp16":  # the trainer's step under train.strategy=zero2 (two DeepSpeed engines)
            sides["zero2"] = trainer_step_fn(make_cfg(args.config, precision, batch, "train.strategy=zero2"), x,
                                             work / f"{precision}-zero2")
        if args.compile:
            sides["compiled"] = trainer_step_fn(make_cfg(args.config, precision, batch, "train.compile=true"), x,
                                                work / f"{precision}-compiled")
        times = {k: [] for k in sides}
        for name, step in sides.items():
            timed(step, x, args.warmup, device)
        for _ in range(args.blocks):
            for name, step in sides.items():
                times[name].append(timed(step, x, args.steps, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"precision": precision, "batch": batch, "plain_ms": 1e3 * med["plain"], "trainer_ms": 1e3 * med["trainer"],
               "overhead_pct": 100 * (med["trainer"] / med["plain"] - 1),
               "plain_img_s": batch / med["plain"], "trainer_img_s": batch / med["trainer"],
               "trainer_skipped_steps": {u.name: u.skipped for u in sides["trainer"].updates},
               **({"zero2_ms": 1e3 * med["zero2"], "zero2_img_s": batch / med["zero2"]} if "zero2" in med else {}),
               **({"compiled_ms": 1e3 * med["compiled"], "compiled_img_s": batch / med["compiled"]} if "compiled" in med else {}),
               "trainer_steps": args.warmup + args.blocks * args.steps,
               "blocks_ms": {k: [1e3 * t for t in v] for k, v in times.items()}}
        rows.append(row)
        print(f"{precision:>4}: plain {row['plain_ms']:.2f} ms  trainer {row['trainer_ms']:.2f} ms  "
              f"overhead {row['overhead_pct']:+.1f} %  ({row['trainer_img_s']:.0f} img/s)"
              + (f"  zero2 {row['zero2_ms']:.2f} ms ({row['zero2_img_s']:.0f} img/s)" if "zero2_ms" in row else "")
              + (f"  compiled {row['compiled_ms']:.2f} ms ({row['compiled_img_s']:.0f} img/s)" if "compiled_ms" in row else ""),
              flush=True)
    base = next((r for r in rows if r["precision"] == "no"), None)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    print(f"\n{args.config}, {dev_name}, torch {torch.__version__}, {args.blocks} blocks x {args.steps} steps, medians")
    print("| precision | batch | plain ms/step | trainer ms/step | trainer overhead | trainer img/s | speed vs fp32 | "
          "compiled ms/step | compiled speed vs fp32 | ZeRO-2 img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{base['trainer_ms'] / r['trainer_ms']:.2f}x" if base else "-"
        comp = (f"{r['compiled_ms']:.2f} | " + (f"{base['trainer_ms'] / r['compiled_ms']:.2f}x" if base else "-")
                if "compiled_ms" in r else "- | -")
        print(f"| {r['precision']} | {r['batch']} | {r['plain_ms']:.2f} | {r['trainer_ms']:.2f} | {r['overhead_pct']:+.1f} % | "
              f"{r['trainer_img_s']:.0f} | {speed} | {comp} | {format(r['zero2_img_s'], '.0f') if 'zero2_img_s' in r else '-'} |")
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "config": args.config, "device": dev_name,
                                    "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
