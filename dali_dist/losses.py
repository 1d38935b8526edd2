"""The DALI objective and its variants as pure functions; none calls ``.backward()``.

Equation numbers refer to Section 3 of the paper "Decomposed Adversarial Learned Inference".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 9 per sample: -log N(z; mu, diag(exp(logvar))), summed over the d dimensions.

    L = 1/2 * sum_j [ (z_j - mu_j)^2 / sigma_j^2 + log sigma_j^2 + log(2 pi) ]. Shape (n,).
    """
    return 0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=1)


def encoder_loss(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | None, lam: float) -> torch.Tensor:
    """L_e of Algorithm 1: lambda/n * sum_i L(z_i, mu_i, sigma_i^2).

    With ``logvar=None`` this is DALI-l2 (identity covariance): lambda/2 * ||z - mu||^2, the
    eq. 9 NLL without its constant terms.
    """
    if logvar is None:
        per_sample = 0.5 * (z - mu).pow(2).sum(dim=1)
    else:
        per_sample = gaussian_nll(z, mu, logvar)
    return lam * per_sample.mean()


# ----------------------------------------------------------------------------------------
# Adversarial games. Each returns (discriminator loss, generator loss) builders.

def d_loss_gan(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """L_d of Algorithm 1: -mean log D(x) - mean log(1 - D(G(z))), D = sigmoid(logit)."""
    return F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + \
        F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))


def g_loss_gan(fake_logit: torch.Tensor) -> torch.Tensor:
    """L_g of Algorithm 1 (non-saturating): -mean log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def d_loss_kl(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """DALI-f, eq. 8: D maximises E[D(x)] - E[exp(D(G(z)) - 1)]; we minimise the negative.

    D's activation is the identity (the raw output), as the paper states for eq. 8.
    """
    return -(real_out.mean() - torch.exp(fake_out - 1.0).mean())


def g_loss_kl(fake_out: torch.Tensor) -> torch.Tensor:
    """DALI-f generator: minimise -E[D(G(z))] (the paper's non-vanishing-gradient form)."""
    return -fake_out.mean()


def d_loss_hinge(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Hinge loss (Lim & Ye 2017; SN-GAN): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    return F.relu(1.0 - real_logit).mean() + F.relu(1.0 + fake_logit).mean()


def g_loss_hinge(fake_logit: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: -E[D(G(z))]."""
    return -fake_logit.mean()


def d_loss_wgan(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss E[D(G(z))] - E[D(x)]; the gradient penalty is added by the trainer."""
    return fake_out.mean() - real_out.mean()


def g_loss_wgan(fake_out: torch.Tensor) -> torch.Tensor:
    return -fake_out.mean()


def gradient_penalty(grad: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x D(x_hat)||_2 - 1)^2] on interpolates."""
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


ADVERSARIAL = {
    "gan": (d_loss_gan, g_loss_gan),
    "hinge": (d_loss_hinge, g_loss_hinge),
    "wgan-gp": (d_loss_wgan, g_loss_wgan),
    "kl": (d_loss_kl, g_loss_kl),
}


def adversarial_game(variant: str, adversarial: str = "gan") -> tuple:
    """The (d_loss, g_loss) pair a model variant plays."""
    return ADVERSARIAL["kl" if variant == "dali-f" else adversarial]


def ali_d_loss(enc_logit: torch.Tensor, gen_logit: torch.Tensor) -> torch.Tensor:
    """ALI/BiGAN: D tells encoder pairs (x, E(x)) (label 1) from generator pairs (G(z), z) (0)."""
    return d_loss_gan(enc_logit, gen_logit)


def ali_ge_loss(enc_logit: torch.Tensor, gen_logit: torch.Tensor) -> torch.Tensor:
    """ALI's G and E with swapped labels (the non-saturating form of Dumoulin et al.)."""
    return F.binary_cross_entropy_with_logits(enc_logit, torch.zeros_like(enc_logit)) + \
        F.binary_cross_entropy_with_logits(gen_logit, torch.ones_like(gen_logit))
