"""The only module that knows how processes, devices and precision are arranged.

Model code stays single-device (models.py); this module wraps it. Today it drives
Accelerate's DDP path (one CPU process, or many GPU/CPU processes under
``accelerate launch``).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import timedelta
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from .config import Config
from .errors import ConfigError, UserError
from .precision import PhaseUpdate, plain_backward


def make_accelerator(cfg: Config) -> Accelerator:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        # One Accelerator refuses two DeepSpeed models, and on CPU it silently falls back to
        # DDP: the trainer builds its two engines itself (train.strategy=zero1|zero2).
        raise UserError("launch DeepSpeed runs as plain multi-process runs (launch/single-node.yaml, "
                        "launch/multi-node.yaml) with --set train.strategy=zero2; an Accelerate DeepSpeed "
                        "config cannot hold D and G+E as two engines")
    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("config: train.mixed_precision=fp16 needs a CUDA GPU; use bf16 on CPU")
    # Precision is applied by autocast_factory around the forward passes, not by Accelerate:
    # for fp16 Accelerate would share one GradScaler between our two optimizers while D steps
    # before G's backward (each phase scales its own loss instead, precision.py); for bf16 its
    # model wrapper casts every output back to fp32, D's feature maps included, which measured
    # +84 % per step on CPU against plain autocast (benchmarks/train_step.py).
    precision = "no"
    # D is called twice per step and BatchNorm buffers change in each call: broadcasting
    # buffers from rank 0 at every forward would clobber them mid-step (docs/design.md, 'BatchNorm buffers').
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    pg = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        kwargs_handlers=[ddp, pg],
    )


def autocast_factory(device: torch.device, cfg: Config):
    """A no-argument context factory for forward passes in the configured precision."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.train.mixed_precision)
    if dtype is None:
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def agree_max(accelerator: Accelerator, flag: torch.Tensor) -> torch.Tensor:
    """The 0-d ``flag``'s maximum over all ranks, left on the device (no host sync).

    Under DDP the averaged gradients are identical on all ranks, so a NaN anywhere is a NaN
    everywhere and every rank reaches the same verdict by itself; under ZeRO each rank holds
    a different gradient partition. Agreeing explicitly costs one tiny all-reduce per phase
    and makes "no rank ever skips a step alone" true by construction.
    """
    if accelerator.num_processes == 1:
        return flag
    return accelerator.reduce(flag.reshape(1).float(), reduction="max").reshape(())


def phase_updates(accelerator: Accelerator, cfg: Config, opt_d, opt_ge) -> tuple[PhaseUpdate, PhaseUpdate]:
    """The D and G+E phase updates of a DDP (or single-process) run, skips agreed across ranks."""
    fp16 = cfg.train.mixed_precision == "fp16"
    return tuple(
        PhaseUpdate(name, opt, backward=plain_backward, agree=lambda f: agree_max(accelerator, f), fp16=fp16,
                    device=accelerator.device)
        for name, opt in (("d", opt_d), ("ge", opt_ge))
    )


def requested_processes(cmdline: list[str]) -> int | None:
    """The --num_processes a launcher command line asked for, if it names one."""
    for i, arg in enumerate(cmdline):
        if arg in ("--num_processes", "--num-processes") and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith(("--num_processes=", "--num-processes=")):
            value = arg.split("=", 1)[1]
        else:
            continue
        return int(value) if value.isdigit() else None
    return None


def check_world_size(world_size: int) -> None:
    """Refuse to train alone when the launch asked for more processes.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process through Accelerate's
    simple launcher (it sets MASTER_ADDR but no WORLD_SIZE), which would silently train with
    half the intended global batch per step on one rank. The launcher is our parent process.
    """
    if world_size != 1 or "WORLD_SIZE" in os.environ:
        return
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:  # not Linux, or no /proc: nothing to check against
        return
    if not any("accelerate" in a for a in parent[:3]):
        return
    asked = requested_processes(parent)
    if asked and asked > 1:
        raise UserError(
            f"the launch asked for {asked} processes but only 1 started (`accelerate launch --cpu` runs one); "
            f"for CPU processes use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {asked}` "
            "or --config_file launch/cpu-2proc.yaml"
        )


def per_rank_batch(cfg: Config, world_size: int) -> int:
    """The config's batch size is global; each rank takes an equal share."""
    if cfg.train.batch_size % world_size:
        raise ConfigError(
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
