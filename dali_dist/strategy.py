"""How the networks are spread over the processes (train.strategy): the trainer's one
distribution seam.

A strategy builds the two optimizers (D; G then E), wraps the networks for training, hands
out the two phase updates (each owns its backward, step and non-finite skips), maps a wrapped
network back to its plain module, moves the optimizer state in and out of checkpoints, and
checks that the replicas still agree. ``DDPStrategy`` goes through Accelerate's ``prepare``
(one process, or many under ``accelerate launch``); ``ZeroStrategy`` builds two DeepSpeed
engines (zero.py). The trainer never asks which one it has.
"""

from __future__ import annotations

import abc
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .algorithm import Networks
from .config import Config
from .distributed import phase_updates, replicas_agree
from .precision import make_adam


class Strategy(abc.ABC):
    """The steps every strategy takes in this order: ``build_optimizers``, then (after the
    weights and ``checkpoint_optimizers()`` were loaded) ``wrap``, then ``load_partitions``."""

    def __init__(self, accelerator, cfg: Config):
        self.accelerator = accelerator
        self.cfg = cfg
        self.opt_d = self.opt_ge = None
        self.updates: tuple = ()
        self._plain: dict[str, nn.Module] = {}
        self._wrapped: dict[str, nn.Module] = {}

    # -- set-up ------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_optimizers(self, G: nn.Module, D: nn.Module, E: Optional[nn.Module], ge_groups: list[dict]):
        """(opt_d, opt_ge); opt_ge holds ``ge_groups``: G's parameters, then E's."""

    @abc.abstractmethod
    def wrap(self, G: nn.Module, D: nn.Module, E: Optional[nn.Module]) -> Networks:
        """The networks as the training step calls them; sets ``updates`` (the D and G+E phases)."""

    def unwrap(self, net: Optional[nn.Module]) -> Optional[nn.Module]:
        """The plain module under a wrapped network (what checkpoints, EMA and samples use)."""
        for name, wrapped in self._wrapped.items():
            if net is not None and net is wrapped:
                return self._plain[name]
        return None if net is None else self.accelerator.unwrap_model(net)

    def _remember(self, plain: dict, wrapped: dict) -> None:
        self._plain, self._wrapped = plain, wrapped

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers whose whole state dicts the checkpoint holds (optim_<name>.pt)."""
        return {}

    def stage_partitions(self, run_dir: Path, step: int) -> dict[str, Path]:
        """Collective: optimizer state each rank writes for itself, as {sub-folder: staged
        folder} for ``save_checkpoint(staged=...)``; empty when the checkpoint holds it all."""
        return {}

    def load_partitions(self, ckpt: Path) -> None:
        """Read back what ``stage_partitions`` wrote (after ``wrap``)."""

    def replicas_diverged(self) -> list[str]:
        """Names of the networks whose weights differ between ranks (collective)."""
        return replicas_agree(self.accelerator, {n: m for n, m in self._plain.items() if m is not None})


class DDPStrategy(Strategy):
    """Accelerate's prepare: DDP over many processes, the plain modules on one."""

    def build_optimizers(self, G, D, E, ge_groups):
        device = self.accelerator.device
        betas = (self.cfg.optim.beta1, self.cfg.optim.beta2)
        # fused Adam on CUDA wants its parameters there when it is built (prepare would move them anyway)
        for net in (G, D, E):
            if net is not None:
                net.to(device)
        self.opt_d = make_adam(D.parameters(), self.cfg.optim.lr_d, betas, device)
        self.opt_ge = make_adam(ge_groups, self.cfg.optim.lr_g, betas, device)
        return self.opt_d, self.opt_ge

    def wrap(self, G, D, E):
        plain = {"G": G, "D": D, "E": E}
        G, D, self.opt_d, self.opt_ge = self.accelerator.prepare(G, D, self.opt_d, self.opt_ge)
        if E is not None:
            E = self.accelerator.prepare(E)
        self._remember(plain, {"G": G, "D": D, "E": E})
        self.updates = phase_updates(self.accelerator, self.cfg, self.opt_d, self.opt_ge)
        return Networks(G, D, E, self.opt_d, self.opt_ge, E_plain=plain["E"])

    def checkpoint_optimizers(self):
        return {"d": self.opt_d, "ge": self.opt_ge}


class ZeroStrategy(Strategy):
    """DeepSpeed ZeRO-1/2: one engine for D, one for G+E; each rank owns a partition of the
    optimizer state, so each rank saves and loads its own (zero.py)."""

    def __init__(self, accelerator, cfg: Config, stage: int):
        super().__init__(accelerator, cfg)
        self.stage = stage

    def build_optimizers(self, G, D, E, ge_groups):
        betas = (self.cfg.optim.beta1, self.cfg.optim.beta2)
        # ZeRO wraps a plain torch Adam and skips by itself
        self.opt_d = torch.optim.Adam(D.parameters(), lr=self.cfg.optim.lr_d, betas=betas)
        self.opt_ge = torch.optim.Adam(ge_groups, lr=self.cfg.optim.lr_g, betas=betas)
        return self.opt_d, self.opt_ge

    def wrap(self, G, D, E):
        from . import zero

        acc = self.accelerator
        batch = self.cfg.train.batch_size // acc.num_processes
        engine_d, engine_ge, _ = zero.build_engines(self.stage, G, D, E, self.opt_d, self.opt_ge, batch,
                                                    acc.num_processes, acc.device)
        self._remember({"G": G, "D": D, "E": E}, {"G": engine_ge, "D": engine_d, "E": E})
        self.updates = (zero.ZeroPhase("d", engine_d), zero.ZeroPhase("ge", engine_ge))
        # G and D are called through their engines, E as a module of engine_ge; the G+E phase
        # calls the plain D so that G's backward never runs D's engine hooks
        return Networks(engine_ge, engine_d, E, self.opt_d, self.opt_ge, D_frozen=D)

    def stage_partitions(self, run_dir, step):
        from . import zero

        acc = self.accelerator
        # every rank writes its optimizer partition, then rank 0 commits them with the checkpoint
        staging = run_dir / "checkpoints" / f".zero-step-{step}"
        if acc.is_main_process and staging.exists():
            shutil.rmtree(staging)
        acc.wait_for_everyone()
        for upd in self.updates:
            zero.save_partition(staging, upd.name, upd.engine, acc.process_index)
        acc.wait_for_everyone()
        return {zero.ZERO_DIR: staging}

    def load_partitions(self, ckpt):
        from . import zero

        for upd in self.updates:
            zero.load_partition(ckpt, upd.name, upd.engine, self.accelerator.process_index, self.accelerator.num_processes)


def make_strategy(accelerator, cfg: Config) -> Strategy:
    """The strategy named by ``cfg.train.strategy``."""
    stage = {"zero1": 1, "zero2": 2}.get(cfg.train.strategy)
    return ZeroStrategy(accelerator, cfg, stage) if stage else DDPStrategy(accelerator, cfg)
