"""Per latent dimension: how far the encoder's mean lands from z on G's own samples, how much
G's output moves for a unit step in that dimension, and the encoder's own variance (its mean, and
the mean of 1/sigma^2: how much more than DALI-l2's fixed variance eq. 9 weighs mu's error).

    python benchmarks/latent_dims.py RUN/checkpoints/step-6000 [MORE ...] --num-samples 1000

Tells an encoder that inverts G uniformly partially (every dimension half recovered) from a
generator that ignores some dimensions (their error near 1 and G's movement near 0). Also
re-measures latent_mse with the discriminator's and encoder's BatchNorm in train mode (batch
statistics), to rule out a train/eval mismatch. Prints a table and writes
benchmarks/results/latent_dims.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def quantiles(t: torch.Tensor) -> list[float]:
    return [round(float(q), 4) for q in t.quantile(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))]


@torch.no_grad()
def measure(path: Path, n: int, seed: int) -> dict:
    from dali_dist.checkpoint import load_export
    from dali_dist.generate import per_sample_latents
    from dali_dist.models import encode

    exp = load_export(path)
    if exp.E is None:
        raise SystemExit(f"error: {path}: variant {exp.cfg.model.variant!r} has no encoder")
    d = exp.cfg.model.latent_dim
    z = per_sample_latents(range(n), d, seed)
    x = exp.G(z)
    mu, logvar = encode(exp.cfg, exp.D, exp.E, x)
    if exp.cfg.model.variant == "dali-l2":  # identity covariance: its logvar head is never trained
        logvar = torch.zeros_like(logvar)
    err = (z - mu).pow(2).mean(0)
    move = torch.stack([(exp.G(z + torch.eye(d)[j]) - x).pow(2).mean().sqrt() for j in range(d)])
    D, E = copy.deepcopy(exp.D).train(), copy.deepcopy(exp.E).train()  # batch statistics, batches of 100
    mu_train = torch.cat([encode(exp.cfg, D, E, x[i:i + 100])[0] for i in range(0, n, 100)])
    return {"variant": exp.cfg.model.variant, "latent_mse": float(err.mean()),
            "latent_mse_batchnorm_train": float((z - mu_train).pow(2).mean()),
            # the weight eq. 9 puts on mu's error, per unit of lambda (dali-l2: sigma^2 = 1, so 1)
            "sigma2_mean": float(logvar.exp().mean()), "inv_sigma2_mean": float((-logvar).exp().mean()),
            "error_per_dim_quantiles": quantiles(err),
            "g_rms_move_per_dim_quantiles": quantiles(move),
            "corr_error_move": float(torch.corrcoef(torch.stack([err, move]))[0, 1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=12345, help="z draws (the evaluation's default seed)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latent_dims.json")
    args = ap.parse_args()
    rows = {str(c): measure(c, args.num_samples, args.seed) for c in args.checkpoints}
    print("| checkpoint | variant | latent_mse | (BN train) | mean sigma^2 | mean 1/sigma^2 | "
          "error per dim min/q1/med/q3/max | G move per dim min/q1/med/q3/max |")
    print("|---|---|---|---|---|---|---|---|")
    for c, r in rows.items():
        print(f"| {c} | {r['variant']} | {r['latent_mse']:.3f} | {r['latent_mse_batchnorm_train']:.3f} | "
              f"{r['sigma2_mean']:.3f} | {r['inv_sigma2_mean']:.3f} | {r['error_per_dim_quantiles']} | "
              f"{r['g_rms_move_per_dim_quantiles']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", "benchmarks/latent_dims.py", *sys.argv[1:]]),
                                    "num_samples": args.num_samples, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
