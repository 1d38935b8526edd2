"""One Adam step over a preset's networks: torch's default (foreach) kernel against the fused one.

    python benchmarks/adam_step.py                    # mnist preset, the trainer's two optimizers
    python benchmarks/adam_step.py --config celeba --steps 50

Both optimizers get the same parameters (copies), the same gradients and the preset's betas
(G's rate stands for E's: the rate does not change the work), and step alternately, one step
each in turn, so machine noise (this CPU is shared) hits both alike; the table gives the
median per step. The trainer builds its Adams through ``dali_dist.precision.make_adam``, fused
on CPU and CUDA: this is the measurement behind that choice. Checks on the way that the two
kernels move the weights to the same values (to float rounding). Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dali_dist.config import load_config  # noqa: E402
from dali_dist.models import build_models  # noqa: E402


def optimizers(cfg, kind: str, device: torch.device):
    """The trainer's two Adams (D; G with E) on fresh copies of the same networks, with gradients."""
    torch.manual_seed(0)
    G, D, E = (None if n is None else n.to(device) for n in build_models(cfg))
    ge = [*G.parameters(), *([] if E is None else E.parameters())]
    gen = torch.Generator(device=device).manual_seed(1)
    params = [*D.parameters(), *ge]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 1e-2
    flag = {"fused": True} if kind == "fused" else {"foreach": True}
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opts = [torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=betas, **flag),
            torch.optim.Adam(ge, lr=cfg.optim.lr_g, betas=betas, **flag)]
    return opts, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mnist", help="preset whose networks to step (mnist, cifar10, celeba, grid2d)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per kernel")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "adam_step.json")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, [] if args.config == "grid2d" else ["data.source=unused"])
    sides = {kind: optimizers(cfg, kind, device) for kind in ("foreach", "fused")}
    n_params = sum(p.numel() for p in sides["fused"][1])
    times = {kind: [] for kind in sides}
    for i in range(args.warmup + args.steps):
        for kind, (opts, _) in sides.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for opt in opts:
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[kind].append(time.perf_counter() - t0)
    # same gradients every step, so both must have walked the same path
    drift = max((a - b).abs().max().item() for a, b in zip(sides["foreach"][1], sides["fused"][1]))
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    print(f"{args.config}: {n_params / 1e6:.2f}M weights, {dev_name}, torch {torch.__version__}, "
          f"{args.steps} alternating steps, medians; largest weight difference after them {drift:.1e}")
    print("| Adam kernel | ms/step | speed |")
    print("|---|---|---|")
    for kind in sides:
        print(f"| {kind} | {med[kind]:.2f} | {med['foreach'] / med[kind]:.2f}x |")
    result = {"config": args.config, "device": dev_name, "torch": torch.__version__, "weights": n_params,
              "steps": args.steps, "warmup": args.warmup, "median_ms": med, "max_weight_difference": drift,
              "steps_ms": {k: [1e3 * t for t in v] for k, v in times.items()},
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
