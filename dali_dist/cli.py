"""The ``dali-dist`` command line (typer). Each command lives in the module that does the work.

    dali-dist train --config grid2d
    dali-dist sample --checkpoint RUN/checkpoints/step-N --num 2500 --out samples.npy
    dali-dist evaluate --run-dir RUN --metrics modes --out metrics.json
    dali-dist prep mnist --source /usr/share/datasets/fashion-mnist --out data/fmnist
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from data_prep.cli import prep_app

from .cli_util import check_device, checkpoint_options, chosen_checkpoint, exits_cleanly
from .classifier import train_classifier_command
from .evaluate import evaluate_command
from .inference_cli import encode_command, interpolate_command, reconstruct_command
from .runs import runs_app
from .train import train_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distributed DALI training pipeline.")
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.add_typer(runs_app, name="runs")
app.command("train-classifier")(train_classifier_command)
app.command("encode")(encode_command)
app.command("reconstruct")(reconstruct_command)
app.command("interpolate")(interpolate_command)


CHECKPOINT, RUN_DIR = checkpoint_options()


@app.command("sample")
def sample_command(
    checkpoint: Optional[Path] = CHECKPOINT,
    run_dir: Optional[Path] = RUN_DIR,
    num: int = typer.Option(..., "--num", min=1, help="Number of samples."),
    out: Path = typer.Option(..., "--out", help="FILE.npy ((N, 2) float or (N, H, W, C) uint8) or a directory of PNGs."),
    seed: int = typer.Option(0, "--seed", help="Sample i uses z seeded by (seed, i)."),
    batch_size: int = typer.Option(500, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files at --out that dali-dist did not write."),
) -> None:
    """Write N generated samples."""
    import signal
    import sys

    from .checkpoint import load_export
    from .generate import GenerationStopped, check_samples_out, generate, write_samples

    check_device(device)
    checkpoint = chosen_checkpoint(checkpoint, run_dir)
    exp = load_export(checkpoint, device)
    is_2d = exp.cfg.data.dataset == "grid2d"
    check_samples_out(out, num, is_2d, overwrite)
    stop = {"requested": False}  # set by the handler, acted on between batches
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda *_: stop.update(requested=True))
    typer.echo(f"sample: {num} samples from {checkpoint} (step {exp.meta['step']}) -> {out}", err=True)
    try:
        samples = generate(exp, num, seed=seed, batch_size=batch_size, progress=sys.stderr.isatty(),
                           should_stop=lambda: stop["requested"])
    except GenerationStopped as exc:
        typer.echo(f"sample: {exc}; nothing written to {out} (run it again)", err=True)
        raise typer.Exit(75)
    write_samples(samples, out, is_2d)
    typer.echo(f"wrote {num} samples to {out}")


app.add_typer(prep_app, name="prep", help="Shard datasets into WebDataset tars.")


def main() -> None:
    exits_cleanly(app)()


if __name__ == "__main__":
    main()
