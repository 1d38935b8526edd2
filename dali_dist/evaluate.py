"""The evaluation job: metrics of a checkpoint, written as metrics.json.

    dali-dist evaluate --checkpoint runs/grid/checkpoints/step-20000 --metrics modes --out metrics.json
    dali-dist evaluate --run-dir runs/grid --metrics modes      # newest complete checkpoint
    python -m dali_dist.evaluate ...                            # the same

Metrics (names encode the protocol, DESIGN.md section 2):
    modes   modes_captured, high_quality_pct on N generated samples of the 2D grid (Table 2)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch
import typer

from .checkpoint import Exported, load_export, newest_checkpoint
from .cli_util import exits_cleanly
from .errors import UserError
from .generate import generate
from .metrics.modes import mode_metrics
from .tracking import attach_metrics


def _modes(exp: Exported, num_samples: Optional[int]) -> dict:
    if exp.cfg.data.dataset != "grid2d":
        raise UserError(f"{exp.path}: metric 'modes' applies to the 2D grid, not {exp.cfg.data.dataset}")
    n = num_samples or exp.cfg.eval.num_samples
    samples = generate(exp, n, seed=exp.cfg.eval.seed, batch_size=exp.cfg.eval.batch_size)
    return mode_metrics(samples.numpy())


METRICS: dict[str, Callable[[Exported, Optional[int]], dict]] = {"modes": _modes}


def evaluate_export(exp: Exported, metrics: list[str], num_samples: Optional[int] = None) -> dict:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"--metrics: unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}")
    out: dict = {"step": exp.meta["step"], "checkpoint": str(exp.path.parent.resolve())}
    for name in metrics:
        out.update(METRICS[name](exp, num_samples))
    return out


def evaluate_checkpoint(path: Path, metrics: list[str], num_samples: Optional[int] = None,
                        device: str = "cpu") -> dict:
    return evaluate_export(load_export(path, device), metrics, num_samples)


def evaluate_command(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A step-<N>/ folder or its export/."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Evaluate the newest complete checkpoint of this run."),
    metrics: str = typer.Option("modes", "--metrics", help=f"Comma-separated: {', '.join(METRICS)}."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", min=1, help="Generated samples (default: the config's eval.num_samples)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics JSON here (default: print only)."),
    device: str = typer.Option("cuda" if torch.cuda.is_available() else "cpu", "--device"),
    track: bool = typer.Option(True, "--track/--no-track", help="Attach the metrics to the training run in MLflow."),
) -> None:
    """Compute metrics of a checkpoint and write metrics.json."""
    if (checkpoint is None) == (run_dir is None):
        raise UserError("give exactly one of --checkpoint or --run-dir")
    if run_dir is not None:
        checkpoint = newest_checkpoint(run_dir)
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    exp = load_export(checkpoint, device)
    result = evaluate_export(exp, names, num_samples)
    ckpt_dir = exp.path.parent  # RUN_DIR/checkpoints/step-<N>
    if track and ckpt_dir.parent.name == "checkpoints":
        run_id = attach_metrics(ckpt_dir.parent.parent, exp.cfg.tracking.uri, result, result["step"])
        if run_id:
            result["mlflow_run_id"] = run_id
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    typer.echo(text)


def main() -> None:
    exits_cleanly(typer.run)(evaluate_command)


if __name__ == "__main__":
    main()
