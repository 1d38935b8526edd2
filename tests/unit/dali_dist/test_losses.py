"""The DALI losses against independent computations (torch.distributions, hand formulas)."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from dali_dist.losses import (
    d_loss_gan, d_loss_kl, encoder_loss, g_loss_gan, g_loss_kl, gaussian_nll,
)


@pytest.fixture
def zmu():
    g = torch.Generator().manual_seed(0)
    n, d = 16, 5
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64).clamp(-3, 3)
    return z, mu, logvar


def test_eq9_equals_negative_log_prob_of_diagonal_normal(zmu):
    z, mu, logvar = zmu
    ref = -Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)
    torch.testing.assert_close(gaussian_nll(z, mu, logvar), ref)


def test_encoder_loss_is_lambda_times_batch_mean(zmu):
    z, mu, logvar = zmu
    d = z.shape[1]
    ref = -Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1).mean() / d
    torch.testing.assert_close(encoder_loss(z, mu, logvar, 1.0 / d), ref)


def test_l2_variant_is_identity_covariance_nll_without_constants(zmu):
    z, mu, _ = zmu
    lam = 0.3
    unit = -Normal(mu, torch.ones_like(mu)).log_prob(z).sum(1)  # includes d/2 log 2pi
    ref = lam * (unit - 0.5 * z.shape[1] * math.log(2 * math.pi)).mean()
    torch.testing.assert_close(encoder_loss(z, mu, None, lam), ref)


def test_gan_losses_match_algorithm_1_log_form():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(32, generator=g, dtype=torch.float64), torch.randn(32, generator=g, dtype=torch.float64)
    rho_q, rho_p = torch.sigmoid(real), torch.sigmoid(fake)
    torch.testing.assert_close(d_loss_gan(real, fake), -torch.log(rho_q).mean() - torch.log(1 - rho_p).mean())
    torch.testing.assert_close(g_loss_gan(fake), -torch.log(rho_p).mean())


def test_f_divergence_game_eq8():
    real = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    fake = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    value = real.mean() - torch.exp(fake - 1).mean()  # V(G, D) of eq. 8
    torch.testing.assert_close(d_loss_kl(real, fake), -value)
    torch.testing.assert_close(g_loss_kl(fake), -fake.mean())


def test_eq9_gradient_matches_closed_form(zmu):
    z, mu, logvar = zmu
    mu = mu.clone().requires_grad_(True)
    logvar = logvar.clone().requires_grad_(True)
    gaussian_nll(z, mu, logvar).sum().backward()
    torch.testing.assert_close(mu.grad, -(z - mu.detach()) * torch.exp(-logvar.detach()))
    torch.testing.assert_close(logvar.grad, 0.5 - 0.5 * (z - mu.detach()) ** 2 * torch.exp(-logvar.detach()))


def test_hinge_and_wgan_losses():
    from dali_dist.losses import d_loss_hinge, d_loss_wgan, g_loss_hinge, g_loss_wgan

    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # hand: relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2.5] -> mean 7/6
    torch.testing.assert_close(d_loss_hinge(real, fake), torch.tensor(5 / 6 + 7 / 6))
    torch.testing.assert_close(g_loss_hinge(fake), torch.tensor(0.5 / 3))  # -mean([-2, 0, 1.5])
    torch.testing.assert_close(d_loss_wgan(real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(g_loss_wgan(fake), -fake.mean())


def test_gradient_penalty_is_zero_for_unit_norm_gradients():
    from dali_dist.losses import gradient_penalty

    g = torch.tensor([[3.0, 4.0], [0.6, 0.8]])  # norms 5 and 1
    torch.testing.assert_close(gradient_penalty(g), torch.tensor((4.0 ** 2 + 0.0) / 2))


def test_ali_losses_are_bce_with_encoder_pairs_real():
    from dali_dist.losses import ali_d_loss, ali_ge_loss

    enc, gen = torch.tensor([0.3, -1.2]), torch.tensor([0.7, 2.0])
    s = torch.sigmoid
    torch.testing.assert_close(ali_d_loss(enc, gen), -torch.log(s(enc)).mean() - torch.log(1 - s(gen)).mean())
    torch.testing.assert_close(ali_ge_loss(enc, gen), -torch.log(1 - s(enc)).mean() - torch.log(s(gen)).mean())
