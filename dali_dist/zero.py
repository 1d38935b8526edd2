"""DeepSpeed ZeRO-1/2 for the GAN: one engine for D, one for G+E (train.strategy=zero1|zero2).

Why not Accelerate's DeepSpeed plugin: one Accelerator refuses two DeepSpeed models, and
``accelerator.backward`` also steps the engine, so nothing could be checked in between.
Here the processes are launched as a plain multi-process run (Accelerate only sets up the
process group), and ``deepspeed.initialize`` is called twice. Each phase is
``engine.backward(loss)`` then ``engine.step()``: ZeRO's step checks the gradient
partitions for inf/NaN, all-reduces that verdict over the data-parallel group and skips the
step on every rank together, which is exactly the agreed skip the trainer needs
(``engine.was_step_applied()`` tells us).

Precision: parameters, gradients and ZeRO's master copy stay fp32 and bf16 comes from
autocast around the forward passes, as in the DDP path (DeepSpeed's own bf16 mode would cast
the modules and every input). fp16 is refused in config.py.

Checkpoints: weights go through checkpoint.py as safetensors (ZeRO-1/2 keep full parameters
on every rank, so rank 0 holds them all). Each rank's optimizer partition is saved by us,
not by ``engine.save_checkpoint``: DeepSpeed's loader unpickles with ``weights_only=False``;
ours strips the non-tensor objects so that ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

import enum
import os
import socket
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .atomic import atomic_path
from .errors import UserError

ZERO_DIR = "zero"


def require_deepspeed():
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise UserError(f"train.strategy needs DeepSpeed ({exc}); pip install 'dali-dist[deepspeed]'") from None
    return deepspeed


class GenEnc(nn.Module):
    """G and E as one module, so that one engine (and one ZeRO partitioning) steps both.

    Its forward is G's: the trainer calls G through the engine (ZeRO-2 prepares its gradient
    buckets in the engine's forward; a backward without one fails inside DeepSpeed) and E as
    a plain module, whose gradients land in the same engine's buckets.
    """

    def __init__(self, G: nn.Module, E: Optional[nn.Module]):
        super().__init__()
        self.G = G
        self.E = E

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z)


def ds_config(stage: int, micro_batch: int, world_size: int) -> dict:
    return {
        "train_batch_size": micro_batch * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed's default is 1.0; the DDP path clips nothing, nor does Algorithm 1
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,  # torch's Adam: no C++ build, runs on CPU and GPU
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process (Accelerate makes none then)."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def build_engines(stage: int, G, D, E, opt_d, opt_ge, micro_batch: int, world_size: int, device: torch.device):
    """(engine_d, engine_ge, gen_enc): opt_ge must hold exactly G's then E's parameters."""
    deepspeed = require_deepspeed()
    ensure_process_group(device)
    cfg = ds_config(stage, micro_batch, world_size)
    gen_enc = GenEnc(G, E)
    engine_d, *_ = deepspeed.initialize(model=D, optimizer=opt_d, config=cfg, dist_init_required=False)
    engine_ge, *_ = deepspeed.initialize(model=gen_enc, optimizer=opt_ge, config=cfg, dist_init_required=False)
    return engine_d, engine_ge, gen_enc


class ZeroPhase:
    """The PhaseUpdate interface (precision.py) over a DeepSpeed engine."""

    scale = 1.0

    def __init__(self, name: str, engine):
        self.name = name
        self.engine = engine
        self.skipped = 0
        self._run = self._max_run = 0

    def zero_grad(self) -> None:
        pass  # the engine clears its gradient partitions in step()

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if kwargs:
            raise UserError("DeepSpeed phases take the whole loss (train.update_order=alternating)")
        self.engine.backward(loss)

    def step(self) -> torch.Tensor:
        self.engine.step()  # ZeRO's step syncs on its own overflow check anyway
        skipped = not self.engine.was_step_applied()  # ZeRO saw inf/NaN on some rank: every rank skipped
        self.skipped += skipped
        self._run = self._run + 1 if skipped else 0
        self._max_run = max(self._max_run, self._run)
        # on the engine's device: the trainer stacks all step statistics there
        return torch.tensor(float(skipped), device=self.engine.device)

    def pop_longest_run(self) -> int:
        longest, self._max_run = self._max_run, self._run
        return longest

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        self.backward(loss)
        return self.step()

    def state_dict(self) -> dict:
        return {"scale": 1.0, "good_steps": 0, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))


# -- optimizer partitions: one file per rank, readable with weights_only=True ---------------

def _plain(obj):
    """Tensors, numbers, strings and containers of them; enums become their value."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


# objects DeepSpeed keeps in the state dict that are not state: the scaler is static here
# (fp32 master weights, no fp16), the slice mappings serve only universal checkpoints
_DROP = ("loss_scaler", "param_slice_mappings")


def _partition_mismatch(opt, sd: dict) -> str:
    """Where a loaded partition does not fit this engine's optimizer ``opt``, or "" if it
    fits. DeepSpeed would otherwise copy a foreign partition into its flat buffers and fail
    deep inside, or silently misalign. Compared: the fp32 partitions (saved unpadded, as this
    engine's own state_dict gives them) and every per-group Adam tensor (saved padded, like the
    engine's flat partitions)."""
    want = [tuple(t.shape) for t in opt.state_dict()["single_partition_of_fp32_groups"]]
    got = sd.get("single_partition_of_fp32_groups")
    if not isinstance(got, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in got):
        return "single_partition_of_fp32_groups: not a list of tensors"
    if [tuple(t.shape) for t in got] != want:
        return f"single_partition_of_fp32_groups: shapes {[tuple(t.shape) for t in got]}, expected {want}"
    base = sd.get("base_optimizer_state")
    if not isinstance(base, dict) or not isinstance(base.get("state"), dict):
        return "base_optimizer_state: not an optimizer state"
    padded = [tuple(t.shape) for t in opt.single_partition_of_fp32_groups]
    for group, tensors in base["state"].items():
        if not isinstance(group, int) or not 0 <= group < len(padded) or not isinstance(tensors, dict):
            return f"base_optimizer_state.state: entry {group!r} names no parameter group of this model"
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor) and t.dim() > 0 and tuple(t.shape) != padded[group]:
                return f"base_optimizer_state.state[{group}].{name}: shape {tuple(t.shape)}, expected {padded[group]}"
    return ""


def save_partition(folder: Path, name: str, engine, rank: int) -> None:
    sd = {k: v for k, v in engine.optimizer.state_dict().items() if k not in _DROP}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"optim_{name}-rank{rank}.pt") as tmp:
        torch.save(_plain(sd), tmp)


def load_partition(ckpt: Path, name: str, engine, rank: int, world_size: int) -> None:
    file = Path(ckpt) / ZERO_DIR / f"optim_{name}-rank{rank}.pt"
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means a bad or missing file
        raise UserError(f"{file}: unreadable ZeRO optimizer partition ({type(exc).__name__})") from None
    if not isinstance(sd, dict):
        raise UserError(f"{file}: not a ZeRO optimizer partition (a {type(sd).__name__}, not a mapping)")
    if sd.get("partition_count") is not None and (
            list(sd["partition_count"]) != [world_size] * len(sd["partition_count"])):
        raise UserError(f"{file}: written by {sd['partition_count'][0]} ranks, this run has {world_size}; "
                        "resume ZeRO checkpoints on the same number of processes")
    mismatch = _partition_mismatch(engine.optimizer, sd)
    if mismatch:
        raise UserError(f"{file}: does not fit this model's optimizer ({mismatch})")
    sd["loss_scaler"] = engine.optimizer.loss_scaler
    # weights were loaded into the modules already; the fp32 partitions are refreshed from them
    engine.optimizer.load_state_dict([sd] * world_size, load_optimizer_states=True, load_from_fp32_weights=False)
