"""Precise BatchNorm statistics for export: exact population statistics of the prior batch."""

import torch
from torch import nn

from dali_dist.batchnorm import has_batchnorm, precise_bn_copy
from dali_dist.seeding import latent


def test_precise_bn_equals_the_average_of_batch_statistics():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    G[1].running_mean.fill_(5.0)  # stale moving averages
    out = precise_bn_copy(G, 4, batches=6, batch_size=50, seed=3)
    assert not out.training and G[1].running_mean.eq(5.0).all()  # the original is untouched
    with torch.no_grad():
        pre = [G[0](latent(50, 4, "precise-bn", 3, i)) for i in range(6)]
    torch.testing.assert_close(out[1].running_mean, torch.stack([p.mean(0) for p in pre]).mean(0))
    torch.testing.assert_close(out[1].running_var, torch.stack([p.var(0) for p in pre]).mean(0))
    assert out[1].momentum == 0.1


def test_networks_without_batchnorm_are_copied_unchanged():
    G = nn.Sequential(nn.Linear(4, 2))
    assert not has_batchnorm(G)
    out = precise_bn_copy(G, 4, batches=5, batch_size=8, seed=0)
    assert out is not G and torch.equal(out[0].weight, G[0].weight)
