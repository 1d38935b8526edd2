"""What a run starts from and ends with: its directory and saved config, its MLflow run,
the checks a resume must pass, and the closing lines that say what to run next."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import __version__
from .atomic import write_text as atomic_write_text
from .batchnorm import to_sync_batchnorm
from .checkpoint import TrainState
from .config import Config, dump_yaml, read_saved_config
from .errors import UserError
from .tracking import NullTracker, git_info, start_tracking

# Learning rates are per-optimizer-step values for the *global* batch in the config: the
# global batch stays fixed when the world size changes, so the learning rates need no change.
LR_RULE = "global batch fixed by config; per-device batch = global / world size; lr unchanged"


# Fields a resumed run may change (operational, or extending the run); any other change
# would silently make the checkpoint mean something else.
RESUME_MAY_CHANGE = {
    "name", "data.source", "train.steps", "train.log_every", "train.sample_every",
    "train.checkpoint_every", "train.checkpoint_kimg", "train.keep_checkpoints", "train.keep_every",
    "train.keep_unevaluated", "train.export_bn_batches", "train.max_nonfinite", "train.dist_timeout_s",
    "data.on_corrupt", "train.compile",
    "tracking.enabled", "tracking.uri", "tracking.experiment",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_run_config(run_dir: Path, cfg: Config, resuming: bool) -> None:
    """A resumed run must keep its config except for the fields in RESUME_MAY_CHANGE.
    Reads only: nothing is written until the checkpoint has loaded (``write_run_config``)."""
    saved = run_dir / "config.yaml"
    if not (resuming and saved.exists()):
        return
    before = _flatten(read_saved_config(saved))
    after = _flatten(cfg.to_dict())
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        raise UserError(
            f"{saved}: cannot resume with a changed {', '.join(refused)} (only "
            f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change)"
        )
    for k in changed:
        print(f"resume: {k} changed from {before.get(k)!r} to {after.get(k)!r}")


def write_run_config(run_dir: Path, cfg: Config) -> None:
    """Create RUN_DIR and save the resolved config. Called once the checkpoint to resume
    from has loaded, so a failed resume leaves the run directory as it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    (run_dir / "images").mkdir(exist_ok=True)


def start_run_tracking(cfg: Config, run_dir: Path, world: int, per_rank: int, data_info=None):
    """Open the MLflow run (main process). Params are logged once, when the run is created;
    values a resume may change are tags-free and param-free on purpose."""
    if not cfg.tracking.enabled:
        return NullTracker()
    import accelerate
    import platform

    params = {k: v for k, v in _flatten(cfg.to_dict()).items() if k not in RESUME_MAY_CHANGE}
    params.update({
        "global_batch_size": cfg.train.batch_size, "per_device_batch_size": per_rank, "world_size": world,
        "lr_rule": LR_RULE,
    })
    # the dataset as its manifest names it (fashion-mnist, not the loader format mnist)
    dataset = data_info.dataset if data_info is not None and data_info.dataset else cfg.data.dataset
    tags = {
        "variant": cfg.model.variant, "dataset": dataset, "data_format": cfg.data.dataset, "world_size": str(world),
        "run_dir": str(run_dir.resolve()), "torch_version": torch.__version__,
        "accelerate_version": accelerate.__version__, "dali_dist_version": __version__,
        "python_version": platform.python_version(),
        **git_info(Path(__file__).resolve().parent.parent),
    }
    if data_info is not None:  # provenance of the shards
        tags["data_manifest_sha256"] = data_info.manifest_sha256 or "none (URL pattern)"
        tags["data_source_dataset"] = data_info.dataset
        tags["data_encoding"] = data_info.encoding
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return start_tracking(
        run_dir, uri=cfg.tracking.uri, experiment=cfg.tracking.experiment or dataset,
        run_name=run_name(cfg, run_dir), params=params, tags=tags,
    )


def run_name(cfg: Config, run_dir: Path) -> str:
    """<config name>-<variant>-<6 hex of the run directory>: two runs of one preset differ in the
    UI and in `runs compare`, and a resumed run keeps its name."""
    import hashlib

    short = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:6]
    parts = [cfg.name] if cfg.name == cfg.model.variant else [cfg.name, cfg.model.variant]
    return "-".join([*parts, short])


def use_sync_batchnorm(accelerator, *modules) -> None:
    """train.sync_bn: batch statistics over the global batch (torch's SyncBatchNorm is GPU-only)."""
    if accelerator.num_processes == 1:
        accelerator.print("train.sync_bn: one process, so plain BatchNorm already sees the whole batch")
        return
    if accelerator.device.type != "cuda":
        raise UserError("config: train.sync_bn needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel); "
                        "drop it on CPU runs")
    for m in modules:
        if m is not None:
            to_sync_batchnorm(m)


def warn_if_world_size_changed(accelerator, cfg: Config, state: TrainState, world: int, batch: int) -> None:
    """One clear warning: what stays the same and what does not when the world size changes."""
    if not state.world_size or state.world_size == world:
        return
    if cfg.train.strategy != "ddp":
        raise UserError(f"checkpoint written by {state.world_size} processes under train.strategy="
                        f"{cfg.train.strategy} cannot resume on {world}: ZeRO partitions the optimizer "
                        "state by rank; resume on the same number of processes")
    accelerator.print(
        f"WARNING: resuming a checkpoint written by {state.world_size} processes on {world}: the global batch "
        f"stays {cfg.train.batch_size} ({batch} per process now), learning rates are unchanged ({LR_RULE}), "
        "and each rank reads a different part of the data from here on, so the run will not match an "
        "uninterrupted one bit for bit"
    )


def next_steps(cfg: Config, run_dir: Path, exit_code: int) -> str:
    """What a run wrote and what to run next, printed when training ends."""
    from .tracking import redact, resolve_uri

    rd = str(run_dir)
    if exit_code != 0:
        return f"stopped: {rd} (checkpoint written); continue with: dali-dist train ... --run-dir {rd} --resume auto"
    metrics = "modes" if cfg.data.dataset == "grid2d" else ("is,mse" if cfg.data.channels == 1 else "fid,is,mse")
    if not cfg.has_encoder:
        metrics = metrics.replace(",mse", "")
    lines = [f"done: {rd}", f"  checkpoints  {rd}/checkpoints/", f"  images       {rd}/images/",
             f"  statistics   {rd}/stats.jsonl", "next:",
             f"  dali-dist evaluate --run-dir {rd} --metrics {metrics} --out {rd}/metrics.json",
             f"  dali-dist sample --run-dir {rd} --num 64 --out {rd}/samples/"]
    if cfg.tracking.enabled:
        uri, _ = resolve_uri(cfg.tracking.uri, run_dir)
        lines.append(f"  mlflow ui --backend-store-uri {redact(uri)}"
                     "   (MLflow 3: the runs are under the 'Model training' view)")
    return "\n".join(lines)
