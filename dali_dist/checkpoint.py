"""Checkpoints: atomic save, resume, retention and the export that evaluation reads.

Layout of ``RUN_DIR/checkpoints/step-<N>/`` (only complete checkpoints carry that name;
they are written under ``.tmp-step-<N>`` and renamed):

    train_state.json            step, batches consumed, wall time (JSON: nothing to unpickle)
    G.safetensors D.safetensors E.safetensors [G_ema]   training weights (E_ema: older runs)
    optim_d.pt optim_ge.pt      optimizer state dicts (tensors only; loaded weights_only=True)
    export/                     what evaluation and inference need, nothing more:
        G.safetensors D.safetensors [E.safetensors]  (G's EMA shadow when EMA is on)
        config.yaml meta.json
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import fsync_dir
from . import __version__
from .config import Config, config_from_dict, dump_yaml
from .errors import UserError
from .models import build_models, sample_shape

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    step: int = 0
    """Completed iterations."""
    batches_consumed: int = 0
    """Real-data batches this rank has taken from its stream (for an exact skip on resume)."""
    elapsed_s: float = 0.0
    """Training wall time over all sessions of this run."""
    world_size: int = 0
    """Processes that wrote the checkpoint (0: unknown, older checkpoints)."""
    phases: dict = field(default_factory=dict)
    """Per-phase fp16 loss scale, growth counter and skipped-step count (precision.py)."""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


# ----------------------------------------------------------------------------------------
# Writing


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _write_export(folder: Path, cfg: Config, step: int, G, D, E) -> None:
    folder.mkdir()
    save_file(_state(G), folder / "G.safetensors")
    save_file(_state(D), folder / "D.safetensors")
    if E is not None:
        save_file(_state(E), folder / "E.safetensors")
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    meta = {
        "step": step,
        "variant": cfg.model.variant,
        "dataset": cfg.data.dataset,
        "latent_dim": cfg.model.latent_dim,
        "sample_shape": list(sample_shape(cfg)),
        "has_encoder": E is not None,
        "dali_dist_version": __version__,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def save_checkpoint(
    run_dir: Path,
    cfg: Config,
    state: TrainState,
    models: dict[str, Optional[nn.Module]],
    optimizers: dict[str, torch.optim.Optimizer],
    export_models: dict[str, Optional[nn.Module]],
    staged: Optional[dict[str, Path]] = None,
) -> Path:
    """Write ``step-<state.step>`` atomically; returns its path. Call on the main process.

    ``staged`` maps sub-folder names to folders other ranks already wrote (ZeRO optimizer
    partitions); they are moved in before the rename, so they appear with the rest or not at all.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, module in models.items():
            if module is not None:
                save_file(_state(module), tmp / f"{name}.safetensors")
        for name, opt in optimizers.items():
            torch.save(opt.state_dict(), tmp / f"optim_{name}.pt")
        _write_export(tmp / "export", cfg, state.step, export_models["G"], export_models["D"], export_models.get("E"))
        for name, folder in (staged or {}).items():
            os.replace(folder, tmp / name)
        (tmp / "train_state.json").write_text(state.to_json())
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if final.exists():  # re-saving the same step (e.g. stop right after resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except (OSError, SafetensorError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not _is_write_error(exc):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{final}: cannot write checkpoint ({_write_reason(exc)}); earlier checkpoints are intact") from None
    return final


def _is_write_error(exc: RuntimeError) -> bool:
    # torch.save's zip writer reports a full disk as a RuntimeError from its C++ stream writer
    return any(s in str(exc) for s in ("PytorchStreamWriter", "inline_container", "file write failed"))


def _write_reason(exc: Exception) -> str:
    """What went wrong, in a few words: a full disk or quota shows up as three exception types."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "I/O error:" in text:  # safetensors: "Error while serializing: I/O error: No space left on device (os error 28)"
        return text.split("I/O error:", 1)[1].split("(os error")[0].strip()
    return "write failed; is the disk full?"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / "train_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(run_dir: Path) -> Path:
    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir}: no complete checkpoint under checkpoints/")
    return ckpts[-1][1]


def prune_checkpoints(run_dir: Path, keep: int, keep_every: int, protect: frozenset = frozenset()) -> list[Path]:
    """Delete old checkpoints beyond the newest ``keep`` (multiples of keep_every and the
    steps in ``protect`` stay)."""
    ckpts = complete_checkpoints(run_dir)
    removed = []
    for step, path in ckpts[:-keep] if keep else ckpts:
        if (keep_every and step % keep_every == 0) or step in protect:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------
# Reading

def resolve_resume(run_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """``auto`` -> newest complete checkpoint or None; a path -> that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        ckpts = complete_checkpoints(run_dir)
        return ckpts[-1][1] if ckpts else None
    path = Path(resume)
    if not (path / "train_state.json").is_file():
        raise UserError(f"{path}: not a complete checkpoint (no train_state.json)")
    return path


def _load_weights(module: nn.Module, file: Path) -> None:
    try:
        tensors = load_file(file)
    except FileNotFoundError:
        raise UserError(f"{file}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{file}: unreadable weights, truncated or not safetensors ({exc})") from None
    # Name the first difference ourselves: load_state_dict's message spans many lines.
    want = module.state_dict()
    missing = [k for k in want if k not in tensors]
    extra = [k for k in tensors if k not in want]
    shape = [k for k in want if k in tensors and tuple(tensors[k].shape) != tuple(want[k].shape)]
    if missing or extra or shape:
        if shape:
            k = shape[0]
            what = f"{k} is {tuple(tensors[k].shape)}, this model's is {tuple(want[k].shape)}"
        else:
            what = f"{len(missing)} tensor(s) missing (e.g. {missing[0]!r})" if missing else f"unexpected tensor {extra[0]!r}"
        raise UserError(f"{file}: weights do not fit this model ({what}); a checkpoint of another config?")
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{file}: weights do not fit this model ({first})") from None


def load_train_state(ckpt: Path) -> TrainState:
    file = ckpt / "train_state.json"
    try:
        raw = json.loads(file.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        state = TrainState(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{file}: invalid train state ({exc})") from None
    for name, kinds in (("step", int), ("batches_consumed", int), ("elapsed_s", (int, float)), ("world_size", int)):
        v = getattr(state, name)
        if isinstance(v, bool) or not isinstance(v, kinds) or not 0 <= v < float("inf"):
            raise UserError(f"{file}: invalid train state ({name} is {v!r}, expected a number >= 0)")
    _check_phases(state.phases, file)
    return state


def _check_phases(phases, file: Path) -> None:
    """phases: {name: {scale, good_steps, skipped}} as precision.py writes it; anything else
    would fail at the first step, far from the file."""
    if not isinstance(phases, dict):
        raise UserError(f"{file}: invalid train state (phases is {phases!r:.60}, expected a mapping)")
    for name, phase in phases.items():
        if not isinstance(phase, dict):
            raise UserError(f"{file}: invalid train state (phases.{name} is {phase!r:.60}, expected a mapping)")
        for key, v in phase.items():
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < float("inf")
            if not ok or (key == "scale" and v == 0):
                raise UserError(f"{file}: invalid train state (phases.{name}.{key} is {v!r:.60}, expected a number >= 0)")


def load_checkpoint(
    ckpt: Path,
    models: dict[str, Optional[nn.Module]],
    optimizers: dict[str, torch.optim.Optimizer],
) -> TrainState:
    for name, module in models.items():
        if module is not None:
            _load_weights(module, ckpt / f"{name}.safetensors")
    for name, opt in optimizers.items():
        file = ckpt / f"optim_{name}.pt"
        try:
            # weights_only: a pickle that would build anything but tensors and containers is
            # refused before any of it runs
            sd = torch.load(file, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{file}: missing") from None
        except pickle.UnpicklingError:
            raise UserError(f"{file}: refused, it holds more than tensors (nothing in it was run)") from None
        except Exception as exc:  # noqa: BLE001 - any failure here means a bad file
            raise UserError(f"{file}: unreadable optimizer state, truncated? ({type(exc).__name__})") from None
        try:
            opt.load_state_dict(sd)
        except Exception as exc:  # noqa: BLE001 - ValueError, KeyError, TypeError for a foreign state
            raise UserError(f"{file}: optimizer state does not fit this model ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
        _check_optimizer_shapes(opt, file)
    return load_train_state(ckpt)


def _check_optimizer_shapes(opt: torch.optim.Optimizer, file: Path) -> None:
    """Every state tensor must have its parameter's shape (the scalar step counter aside):
    load_state_dict checks only the number of parameters, and a wrong shape would surface as a
    broadcast error at the first training step, or not at all."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, v in opt.state.get(p, {}).items():
            if not isinstance(v, torch.Tensor) or (key == "step" and v.dim() == 0):
                continue
            if tuple(v.shape) != tuple(p.shape):
                raise UserError(f"{file}: optimizer state does not fit this model (parameter {i}: {key} is "
                                f"{tuple(v.shape)}, the parameter is {tuple(p.shape)}); a checkpoint of another config?")


@dataclass
class Exported:
    cfg: Config
    meta: dict
    G: nn.Module
    D: nn.Module
    E: Optional[nn.Module]
    path: Path


def export_dir(path: Path) -> Path:
    """Accept a ``step-<N>/`` folder or its ``export/``."""
    path = Path(path)
    if (path / "export" / "meta.json").is_file():
        return path / "export"
    if (path / "meta.json").is_file():
        return path
    raise UserError(f"{path}: not a checkpoint (expected step-<N>/ or its export/ with meta.json)")


def _check_meta(meta, cfg: Config, file: Path) -> None:
    """meta.json must agree with config.yaml beside it (what inference and evaluation read)."""
    if not isinstance(meta, dict):
        raise UserError(f"{file}: not a JSON object")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{file}: step is {step!r}, expected an integer >= 0")
    if meta.get("sample_shape") != list(sample_shape(cfg)):
        raise UserError(f"{file}: sample_shape {meta.get('sample_shape')!r} does not match config.yaml "
                        f"({list(sample_shape(cfg))}); the export was assembled from different runs")


def load_export(path: Path, device: torch.device | str = "cpu") -> Exported:
    folder = export_dir(path)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        raw = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{folder}: unreadable export ({' '.join(str(exc).split())[:200]})") from None
    try:
        cfg = config_from_dict(raw)
    except UserError as exc:
        raise UserError(f"{folder / 'config.yaml'}: {str(exc)[:300]}") from None
    _check_meta(meta, cfg, folder / "meta.json")
    G, D, E = build_models(cfg)
    _load_weights(G, folder / "G.safetensors")
    _load_weights(D, folder / "D.safetensors")
    if E is not None:
        _load_weights(E, folder / "E.safetensors")
    for net in (G, D, E):
        if net is not None:
            net.to(device).eval().requires_grad_(False)
    return Exported(cfg, meta, G, D, E, folder)
