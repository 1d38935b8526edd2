"""The only module that knows how processes, devices and precision are arranged.

Model code stays single-device (models.py); this module wraps it. Today it drives
Accelerate's DDP path (one CPU process, or many GPU/CPU processes under
``accelerate launch``).
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from .config import Config
from .errors import UserError


def make_accelerator(cfg: Config) -> Accelerator:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        # Accelerate would silently fall back to DDP on CPU and wrap only one engine on GPU.
        raise UserError("DeepSpeed launch configs are not supported by this trainer yet; "
                        "launch with a plain multi-GPU config (launch/single-node.yaml, launch/multi-node.yaml)")
    precision = cfg.train.mixed_precision
    if precision == "fp16":
        # Accelerate shares one GradScaler between our two optimizers and D steps before G's
        # backward; correct fp16 needs per-phase scaling with overflow skips agreed across
        # ranks (DESIGN.md section 3), which this trainer does not do yet. bf16 needs none.
        raise UserError("config: train.mixed_precision=fp16 is not supported yet (two optimizers need "
                        "per-phase loss scaling); use bf16, which needs no loss scaling")
    # D is called twice per step and BatchNorm buffers change in each call: broadcasting
    # buffers from rank 0 at every forward would clobber them mid-step (DESIGN.md section 3).
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        kwargs_handlers=[ddp],
    )


def per_rank_batch(cfg: Config, world_size: int) -> int:
    """The config's batch size is global; each rank takes an equal share."""
    if cfg.train.batch_size % world_size:
        raise UserError(
            f"config: train.batch_size={cfg.train.batch_size} is global and must divide evenly "
            f"by the {world_size} processes"
        )
    return cfg.train.batch_size // world_size


def fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """Two numbers that change when any weight changes or two weights swap places."""
    vec = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    weights = torch.arange(1, vec.numel() + 1, dtype=torch.float64, device=vec.device).remainder_(97)
    return torch.stack([vec.sum(), (vec * weights).sum()])


def replicas_agree(accelerator: Accelerator, modules: dict[str, torch.nn.Module]) -> list[str]:
    """Names of modules whose weights differ between ranks (empty when all agree).

    DDP keeps replicas identical only if every rank runs the same optimizer steps on the
    same averaged gradients; a rank that skipped a step alone, or a parameter left out of
    the reducer, shows up here. Called at every checkpoint (cheap: one small all-gather).
    """
    if accelerator.num_processes == 1:
        return []
    local = torch.stack([fingerprint(m) for m in modules.values()]).to(accelerator.device)
    everyone = accelerator.gather(local[None]).reshape(accelerator.num_processes, *local.shape)
    return [name for i, name in enumerate(modules) if not torch.equal(everyone[:, i], everyone[:1, i].expand_as(everyone[:, i]))]


def any_rank(accelerator: Accelerator, local: bool) -> bool:
    """True on every rank when any rank's flag is set (one tiny all-reduce; local alone).

    Stopping must be agreed: a rank that saw RUN_DIR/STOP one step before the others would
    wait in the checkpoint's gather while they wait in the next step's backward.
    """
    if accelerator.num_processes == 1:
        return local
    flag = torch.tensor([1 if local else 0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())
