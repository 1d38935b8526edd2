"""``dali-dist encode | reconstruct | interpolate``: inference from the command line.

    dali-dist encode --checkpoint RUN/checkpoints/step-N --split test --out latents.npz
    dali-dist reconstruct --checkpoint RUN/checkpoints/step-N --num 32 --out recon/
    dali-dist interpolate --checkpoint RUN/checkpoints/step-N --pairs 8 --steps 10 --out interp/

``--data`` defaults to the shards the model was trained on. Images are written as arrays and
as PNG grids (originals beside reconstructions; one interpolation path per row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer
from tqdm import tqdm

from .cli_util import check_device, checkpoint_options, chosen_checkpoint
from .errors import UserError
from .inference import DaliModel
from .outputs import check_file, check_folder, save_npz
from .visualize import image_grid_png, to_uint8_images

CHECKPOINT, RUN_DIR = checkpoint_options()
DATA = typer.Option(None, "--data", help="Shard directory or URL pattern (default: the training data).")
SPLIT = typer.Option("test", "--split", help="Which split to read.")
DEVICE = typer.Option("cuda" if torch.cuda.is_available() else "cpu", "--device")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing files at --out that dali-dist did not write.")



def _source(model: DaliModel, data: Optional[str]) -> str:
    from .config import saved_source

    source = data or saved_source(model.exp.cfg.data.source, str(model.exp.path))
    if source is None:
        raise UserError("--data is required: this model was trained on samples drawn on the fly")
    return source


def _first(model: DaliModel, source: str, split: str, n: int):
    from .data import eval_batches

    xs, ys = [], []
    for x, y, _ in eval_batches(source, split=split, batch_size=min(n, 500)):
        xs.append(x)
        ys.append(y)
        if sum(len(b) for b in xs) >= n:
            break
    if not xs:
        raise UserError(f"{source}: split {split!r} is empty")
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def encode_command(
    checkpoint: Optional[Path] = CHECKPOINT, run_dir: Optional[Path] = RUN_DIR, data: Optional[str] = DATA,
    split: str = SPLIT,
    out: Path = typer.Option(..., "--out", help="Output .npz: codes (mu), sigmas, labels, keys."),
    batch_size: int = typer.Option(500, "--batch-size", min=1), device: str = DEVICE, overwrite: bool = OVERWRITE,
) -> None:
    """Encode a whole split: mu(x) and sigma(x) for every sample."""
    from .data import describe, eval_batches

    check_file(out, overwrite=overwrite)
    model = DaliModel.load(chosen_checkpoint(checkpoint, run_dir), check_device(device), batch_size)
    source = _source(model, data)
    total = describe(source, split).splits.get(split)
    codes, sigmas, labels, keys = [], [], [], []
    with tqdm(total=total, desc=f"encode {split}", unit="img") as bar:
        for x, y, k in eval_batches(source, split=split, batch_size=batch_size):
            mu, sigma = model.encode(x)
            codes.append(mu.cpu().numpy())
            sigmas.append(sigma.cpu().numpy())
            labels.append(y.numpy())
            keys.extend(k)
            bar.update(len(x))
    save_npz(out, "encode", codes=np.concatenate(codes), sigmas=np.concatenate(sigmas),
              labels=np.concatenate(labels), keys=np.array(keys))
    typer.echo(f"wrote {sum(len(c) for c in codes)} codes ({model.latent_dim}-d) to {out}")


def reconstruct_command(
    checkpoint: Optional[Path] = CHECKPOINT, run_dir: Optional[Path] = RUN_DIR, data: Optional[str] = DATA,
    split: str = SPLIT,
    num: int = typer.Option(32, "--num", min=1, help="How many samples (the first of the split)."),
    out: Path = typer.Option(..., "--out", help="Output directory: reconstructions.npz and grid.png."),
    device: str = DEVICE, overwrite: bool = OVERWRITE,
) -> None:
    """Reconstruct G(mu(x)); the grid shows each original beside its reconstruction."""
    check_folder(out, ["reconstructions.npz", "grid.png"], overwrite=overwrite)
    model = DaliModel.load(chosen_checkpoint(checkpoint, run_dir), check_device(device))
    x, y = _first(model, _source(model, data), split, num)
    rec = model.reconstruct(x).cpu()
    out.mkdir(parents=True, exist_ok=True)
    if len(model.shape) == 3:
        orig_u8, rec_u8 = to_uint8_images(x), to_uint8_images(rec)
        save_npz(out / "reconstructions.npz", "reconstruct", originals=orig_u8, reconstructions=rec_u8, labels=y.numpy())
        pairs = np.stack([orig_u8, rec_u8], axis=1).reshape(-1, *orig_u8.shape[1:])
        image_grid_png(pairs, out / "grid.png", nrow=16, command="reconstruct")
    else:
        save_npz(out / "reconstructions.npz", "reconstruct", originals=x.numpy(), reconstructions=rec.numpy(), labels=y.numpy())
    typer.echo(f"wrote {len(x)} reconstructions to {out}")


def interpolate_command(
    checkpoint: Optional[Path] = CHECKPOINT, run_dir: Optional[Path] = RUN_DIR, data: Optional[str] = DATA,
    split: str = SPLIT,
    pairs: int = typer.Option(8, "--pairs", min=1, help="Paths between consecutive samples of the split."),
    steps: int = typer.Option(10, "--steps", min=2, help="Points on each path, endpoints included."),
    out: Path = typer.Option(..., "--out", help="Output directory: interpolations.npz and grid.png."),
    device: str = DEVICE, overwrite: bool = OVERWRITE,
) -> None:
    """Decode straight lines between the codes of pairs of real samples."""
    check_folder(out, ["interpolations.npz", "grid.png"], overwrite=overwrite)
    model = DaliModel.load(chosen_checkpoint(checkpoint, run_dir), check_device(device))
    x, _ = _first(model, _source(model, data), split, 2 * pairs)
    if len(x) < 2 * pairs:
        raise UserError(f"split {split!r} has {len(x)} samples, fewer than the {2 * pairs} that --pairs {pairs} needs")
    paths = torch.stack([model.interpolate(x[2 * i], x[2 * i + 1], steps).cpu() for i in range(pairs)])
    out.mkdir(parents=True, exist_ok=True)
    if len(model.shape) == 3:
        u8 = to_uint8_images(paths.reshape(-1, *model.shape))
        save_npz(out / "interpolations.npz", "interpolate", paths=u8.reshape(pairs, steps, *u8.shape[1:]))
        image_grid_png(u8, out / "grid.png", nrow=steps, command="interpolate")
    else:
        save_npz(out / "interpolations.npz", "interpolate", paths=paths.numpy())
    typer.echo(f"wrote {pairs} interpolation paths of {steps} steps to {out}")
