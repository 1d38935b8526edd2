"""Splitting evaluation work across processes and gathering the results in sample order.

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) the process group is set up
through Accelerate's ``PartialState`` (NCCL on GPUs, gloo on CPUs); otherwise everything is
local. Rank ``r`` of ``W`` owns samples ``[r*N//W, (r+1)*N//W)``, so gathering the per-rank
rows in rank order reproduces the single-process order exactly.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch


class Ranks:
    def __init__(self, device: Optional[str] = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        if self.world > 1:
            from accelerate import PartialState

            state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
            self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
        else:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def gather_rows(self, local: np.ndarray) -> np.ndarray:
        """Concatenate every rank's rows in rank order (on every rank)."""
        if self.world == 1:
            return local
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(local)).to(self.device)
        counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([len(t)], device=self.device))
        counts = [int(c.item()) for c in counts]
        pad = max(counts)
        padded = torch.zeros((pad, *t.shape[1:]), dtype=t.dtype, device=self.device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts)])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Meet the other ranks, then tear the process group down explicitly.

        Left to interpreter exit, gloo's threads were destroyed while still joinable now and
        then ("terminate called without an active exception"), aborting a rank after all its
        work was done and turning a finished evaluation into the launcher's exit 1.
        """
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():  # only the group this object joined
            dist.barrier()
            dist.destroy_process_group()
