"""What a training run's checkpoints hold, registered once, and the one place that saves,
loads and prunes them (the file format itself is checkpoint.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from torch import nn

from .checkpoint import TrainState, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import Config
from .strategy import Strategy

Protect = Callable[[Path], frozenset]
"""Given the run directory: steps whose checkpoints retention must keep."""


class RunCheckpoints:
    """The training weights (EMA shadows included), the optimizer state the strategy keeps,
    and the exported G/D/E that evaluation reads.

    ``models`` are the plain modules (what the strategy's ``unwrap`` returns), so they can be
    loaded before the networks are wrapped. ``export`` builds the exported networks when a
    checkpoint is written. ``protect`` is asked which steps retention must not prune
    (the caller decides, e.g. the steps not evaluated yet).
    """

    def __init__(self, run_dir: Path, cfg: Config, accelerator, strategy: Strategy,
                 models: dict[str, Optional[nn.Module]], export: Callable[[], dict[str, Optional[nn.Module]]],
                 protect: Optional[Protect] = None):
        self.run_dir = run_dir
        self.cfg = cfg
        self.accelerator = accelerator
        self.strategy = strategy
        self.models = models
        self.export = export
        self.protect = protect

    def load(self, ckpt: Path) -> TrainState:
        """Weights and whole optimizer states, before the strategy wraps the networks (the
        strategy's per-rank partitions follow after, through ``strategy.load_partitions``)."""
        return load_checkpoint(ckpt, self.models, self.strategy.checkpoint_optimizers())

    def save(self, state: TrainState, updates) -> None:
        """Collective: check the replicas, stage per-rank state, write ``step-<N>`` on the main
        process and prune the old ones."""
        acc = self.accelerator
        diverged = self.strategy.replicas_diverged()
        if diverged:
            raise RuntimeError(f"step {state.step}: weights of {', '.join(diverged)} differ between ranks")
        state.world_size = acc.num_processes
        state.phases = {upd.name: upd.state_dict() for upd in updates}
        staged = self.strategy.stage_partitions(self.run_dir, state.step)
        if acc.is_main_process:
            save_checkpoint(self.run_dir, self.cfg, state, self.models, self.strategy.checkpoint_optimizers(),
                            self.export(), staged=staged)
            protect = self.protect(self.run_dir) if self.protect else frozenset()
            prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints, self.cfg.train.keep_every, protect)
        acc.wait_for_everyone()
