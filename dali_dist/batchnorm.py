"""Precise BatchNorm statistics for the exported generator.

During training BatchNorm keeps an exponential moving average of batch statistics (momentum
0.1, so effectively the last ~10 batches). A generator that places its outputs precisely
(the 2D grid's modes are 0.05 wide) is sensitive to the few-percent noise of that average:
measured on one grid run, G in eval mode put 75 % of samples within 3 std of a mode, the
same weights with batch statistics 96 %. So before export the generator's running
statistics are re-estimated as a plain average over many batches of the prior, which is the
population the generator will see (Wu & Johnson 2021, "Rethinking BatchNorm": PreciseBN).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from .seeding import latent


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _swap_batchnorm(module: nn.Module, make) -> nn.Module:
    for name, child in module.named_children():
        new = make(child)
        if new is None:
            _swap_batchnorm(child, make)
            continue
        new.load_state_dict(child.state_dict())
        new.to(next(child.buffers()).device)
        new.train(child.training)
        new.requires_grad_(any(p.requires_grad for p in child.parameters()))
        setattr(module, name, new)
    return module


def to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm -> SyncBatchNorm in place (statistics over the global batch), remembering
    each layer's original class so that to_plain_batchnorm can undo it exactly."""
    def make(child):
        if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(child, nn.SyncBatchNorm):
            return None
        sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
        sync._dali_plain_cls = type(child)
        return sync
    return _swap_batchnorm(module, make)


def to_plain_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm -> its original BatchNorm class, in place (same state-dict keys).

    A copy used on the main process alone (export, sample grids) must not all-reduce its
    batch statistics with ranks that are not running it.
    """
    def make(child):
        if not isinstance(child, nn.SyncBatchNorm):
            return None
        cls = getattr(child, "_dali_plain_cls", nn.BatchNorm2d)
        return cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
    return _swap_batchnorm(module, make)


@torch.no_grad()
def precise_bn_copy(G: nn.Module, latent_dim: int, *, batches: int, batch_size: int, seed: int) -> nn.Module:
    """A copy of G (in eval mode) whose BatchNorm statistics average ``batches`` prior batches."""
    out = to_plain_batchnorm(copy.deepcopy(G))
    if not has_batchnorm(out) or batches <= 0:
        return out.eval()
    device = next(out.parameters()).device
    bns = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    out.train()
    for i in range(batches):
        out(latent(batch_size, latent_dim, "precise-bn", seed, i, device=device))
    for bn in bns:
        bn.momentum = 0.1
    return out.eval()


@contextmanager
def running_stats_untouched(module: nn.Module):
    """Inside, ``module``'s BatchNorm layers normalise as usual (batch statistics in training)
    but never touch their running statistics: a second forward of the same batch must not
    count it twice, and an in-place update (or restore) of those buffers would invalidate the
    first forward's graph, which saved them for its backward."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False  # in training: batch statistics, buffers left out of the call
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True
