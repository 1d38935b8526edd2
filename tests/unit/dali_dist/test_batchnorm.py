"""Precise BatchNorm statistics for export: exact population statistics of the prior batch."""

import torch
from torch import nn

from dali_dist.batchnorm import has_batchnorm, precise_bn_copy, running_stats_untouched
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


def test_running_stats_untouched_normalises_with_the_batch_but_restores_the_averages():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=None)).train()
    x = torch.randn(16, 3) * 3 + 1
    net(x)  # one counted batch
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with running_stats_untouched(net):
        inside = net(x)
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(m.track_running_stats for m in (net[1], net[3]))
    torch.testing.assert_close(inside, net(x))  # the same output as an ordinary training forward...
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])  # ...which does update them
    net.eval()
    with running_stats_untouched(net):
        torch.testing.assert_close(net[1](net[0](x)), (net[0](x) - net[1].running_mean) / (net[1].running_var + net[1].eps).sqrt()
                                   * net[1].weight + net[1].bias)  # in eval: still the running statistics
