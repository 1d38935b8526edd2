"""ema.py: the shadow weights against a hand-computed exponential moving average, the
buffers copied rather than averaged, and a shadow that is a separate, frozen copy."""

import pytest
import torch
from torch import nn

from dali_dist.ema import EMA


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999])
def test_shadow_is_the_exponential_moving_average_of_the_weights(beta):
    """After weights w_1..w_k: beta^k w_0 + sum_i (1 - beta) beta^(k - i) w_i, in float64 by hand."""
    model = nn.Linear(3, 2)
    values = [0.25, -1.0, 3.0, 0.5, 2.0]
    _set(model, values[0])
    ema = EMA(model, beta)
    for v in values[1:]:
        _set(model, v)
        ema.update(model)
    k = len(values) - 1
    expected = beta ** k * values[0] + sum((1 - beta) * beta ** (k - i) * values[i] for i in range(1, k + 1))
    for p in ema.shadow.parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected), rtol=1e-6, atol=1e-6)


def test_each_parameter_is_averaged_with_its_own_counterpart():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    start = [p.detach().clone() for p in model.parameters()]
    ema = EMA(model, 0.75)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(i + 1.0)  # a different shift per tensor: a mix-up between tensors shows
    ema.update(model)
    for i, (s, w0) in enumerate(zip(ema.shadow.parameters(), start)):
        torch.testing.assert_close(s, w0 + 0.25 * (i + 1.0))


def test_batchnorm_buffers_follow_the_live_model_exactly():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    ema = EMA(model, 0.9)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 2) * 5 + 3)
    ema.update(model)
    bn_live, bn_shadow = model[1], ema.shadow[1]
    assert torch.equal(bn_shadow.running_mean, bn_live.running_mean)
    assert torch.equal(bn_shadow.running_var, bn_live.running_var)
    assert int(bn_shadow.num_batches_tracked) == int(bn_live.num_batches_tracked) == 3
    assert not torch.equal(bn_shadow.running_mean, torch.zeros(4))  # the statistics did move


def test_the_shadow_is_a_frozen_copy_the_live_model_does_not_share():
    model = nn.Linear(3, 2)
    _set(model, 1.0)
    ema = EMA(model, 0.5)
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the live model is left trainable
    _set(model, 5.0)  # changing the model alone leaves the shadow where it was
    assert all(torch.equal(p, torch.ones_like(p)) for p in ema.shadow.parameters())
    model.weight.grad = torch.ones_like(model.weight)
    ema.update(model)
    assert all(p.grad is None for p in ema.shadow.parameters())
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight))  # update() does not touch gradients
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in ema.shadow.parameters())
