"""Train DALI (Algorithm 1) on one CPU, one GPU or many, through Accelerate.

    dali-dist train --config grid2d --run-dir runs/grid
    python -m dali_dist.train --config mnist --data data/fmnist --set train.steps=2000
    accelerate launch -m dali_dist.train --config cifar10 --data /shards/cifar10
    dali-dist train --config grid2d --run-dir runs/grid --resume auto    # continue

Exit codes: 0 finished, 2 bad input, 75 stopped (RUN_DIR/STOP, SIGTERM or SIGUSR1) after a
checkpoint, to be requeued. Under `accelerate launch` a stopped run exits 0 (the launcher
would turn 75 into a failure); RUN_DIR/exit_code always holds the trainer's own code.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .batches import DeviceBatches, check_data_matches
from .checkpoint import complete_checkpoints
from .cli_util import exits_cleanly
from .config import Config, dump_yaml, load_config
from .errors import UserError
from .run_setup import LR_RULE, RESUME_MAY_CHANGE, start_run_tracking
from .schedule import learning_rate_plan, set_learning_rates
from .trainer import EXIT_REQUEUE, StopRequest, Trainer

# what callers and tests have always imported from here
__all__ = ["train", "train_command", "main", "EXIT_REQUEUE", "StopRequest", "DeviceBatches", "check_data_matches",
           "LR_RULE", "RESUME_MAY_CHANGE", "start_run_tracking", "learning_rate_plan",
           "set_learning_rates", "unevaluated_steps"]


def unevaluated_steps(run_dir: Path) -> frozenset:
    """Checkpoints `dali-dist evaluate` has not scored yet (train.keep_unevaluated keeps them)."""
    from .evaluate import evaluated_steps  # evaluation is imported only when retention asks

    return frozenset(s for s, _ in complete_checkpoints(run_dir)) - evaluated_steps(run_dir)


def train(cfg: Config, run_dir: Path, resume: Optional[str] = None) -> int:
    """Run training to ``cfg.train.steps``; returns the process exit code."""
    trainer = Trainer.build(cfg, run_dir, resume, protect=unevaluated_steps if cfg.train.keep_unevaluated else None)
    return trainer.finish(trainer.run())


def train_command(
    config: str = typer.Option("grid2d", "--config", "-c", help="Preset name (grid2d, mnist, cifar10, celeba) or a YAML file."),
    data: Optional[str] = typer.Option(None, "--data", help="Shard directory or URL pattern (sets data.source)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>-<time>)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (sets tracking.uri)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field: section.field=value (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (newest complete checkpoint) or a checkpoint path."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train DALI (Algorithm 1)."""
    if tracking_uri is not None:
        overrides = [*overrides, f"tracking.uri={tracking_uri}"]
    cfg = load_config(config, overrides, data)
    if dry_run:
        typer.echo(dump_yaml(cfg), nl=False)
        return
    if run_dir is None:
        if resume is not None and resume != "auto":
            run_dir = Path(resume).resolve().parent.parent
        elif resume == "auto":
            raise UserError("--resume auto needs --run-dir (the run to continue)")
        else:
            run_dir = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    code = train(cfg, run_dir, resume)
    if code == EXIT_REQUEUE and os.environ.get("TORCHELASTIC_RUN_ID"):
        # Under a launcher a non-zero exit becomes a failure with a traceback; exit cleanly
        # and let RUN_DIR/exit_code (75) tell the batch script to requeue.
        code = 0
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # Every rank has passed the final barrier and torn its process group down. Exiting
        # through the interpreter's teardown then aborted a rank now and then ("terminate called
        # without an active exception": a communication thread destroyed at exit), turning a
        # finished run into a launcher failure; leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def main() -> None:
    exits_cleanly(typer.run)(train_command)


if __name__ == "__main__":
    main()
