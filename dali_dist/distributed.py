"""The only module that knows how processes, devices and precision are arranged.

Model code stays single-device (models.py); this module wraps it. Today it drives
Accelerate's DDP path (one CPU process, or many GPU/CPU processes under
``accelerate launch``).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from .config import Config
from .errors import UserError


def make_accelerator(cfg: Config) -> Accelerator:
    precision = cfg.train.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("config: train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
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
