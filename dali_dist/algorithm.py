"""One iteration of Algorithm 1 as explicit phases (docs/design.md, 'One iteration of Algorithm 1').

Each phase switches gradients on for exactly the networks it updates (StyleGAN style), so
the D step can never move G or E and the G+E step can never move D's trunk or head, while
gradients still flow *through* the frozen D into G. D is always called through the object
handed in (its DDP wrapper when distributed) so that wrapper hooks stay consistent.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .batchnorm import running_stats_untouched
from .losses import adversarial_game, ali_d_loss, ali_ge_loss, encoder_loss, gradient_penalty
from .precision import PhaseUpdate


@dataclass
class Networks:
    G: nn.Module
    D: nn.Module
    E: Optional[nn.Module]
    opt_d: torch.optim.Optimizer
    opt_ge: torch.optim.Optimizer
    D_frozen: Optional[nn.Module] = None
    """How to call D in the G+E phase, if not as D: under DeepSpeed its plain module, so that
    G's backward through the frozen D never runs D's engine hooks (zero.py)."""

    E_plain: Optional[nn.Module] = None
    """E's plain module when E is wrapped (DDP): for a second forward in the same step, which
    a DDP wrapper allows only once per backward."""

    @property
    def D_for_g(self) -> nn.Module:
        return self.D_frozen if self.D_frozen is not None else self.D

    @property
    def E_unwrapped(self) -> Optional[nn.Module]:
        return self.E_plain if self.E_plain is not None else self.E


def set_trainable(modules, flag: bool) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(flag)


def _params(*modules) -> list[torch.nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters()]


class DaliStep:
    """Runs one Algorithm 1 iteration; returns float stats (no syncs beyond ``.item()``)."""

    def __init__(
        self,
        nets: Networks,
        *,
        variant: str,
        lambda_e: float,
        update_order: str,
        adversarial: str = "gan",
        gp_weight: float = 10.0,
        backward: Callable[..., None] = None,
        autocast: Callable[[], object] = nullcontext,
        updates: Optional[tuple[PhaseUpdate, PhaseUpdate]] = None,
        encoder_reads_image: bool = False,
        g_through_sigma: bool = True,
    ):
        self.nets = nets
        self.variant = variant
        self.lambda_e = lambda_e
        # dali: E reads D's trunk features h of G(z) (E never updates the trunk), or with
        # model.e_input=image G(z) itself; either way G gets E's gradient
        self.encoder_reads_image = encoder_reads_image
        self.g_through_sigma = g_through_sigma or variant == "dali-l2"  # dali-l2 has no sigma
        self.update_order = update_order
        self.d_loss_fn, self.g_loss_fn = adversarial_game(variant, adversarial)
        self.gp_weight = gp_weight if adversarial == "wgan-gp" else 0.0
        backward = backward or (lambda loss, **kw: loss.backward(**kw))
        # each phase owns its backward/step: fp16 scale and non-finite skips (precision.py)
        self.upd_d, self.upd_ge = updates or (
            PhaseUpdate("d", nets.opt_d, backward=backward), PhaseUpdate("ge", nets.opt_ge, backward=backward))
        # BatchNorm statistics differ between one batch of real+fake and two separate batches
        self.fuse_d = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in nets.D.modules())
        self.autocast = autocast

    # -- pieces shared by both update orders ---------------------------------------------
    def _encoder_loss(self, z: torch.Tensor, x_fake: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, dict]:
        E = self.nets.E
        if E is None:  # plain GAN: no inference network
            return torch.zeros((), device=z.device), {}
        e_input = x_fake if self.encoder_reads_image else h
        mu, logvar = E(e_input)
        mu, logvar = mu.float(), logvar.float()
        if self.g_through_sigma:
            loss = encoder_loss(z, mu, None if self.variant == "dali-l2" else logvar, self.lambda_e)
        else:
            loss = self._encoder_loss_sigma_held(z, mu, logvar, e_input)
        stats = {"loss_e": loss.detach(), "z_mse": (z - mu.detach()).pow(2).mean()}
        if self.variant != "dali-l2":
            stats["sigma_mean"] = torch.exp(0.5 * logvar.detach()).mean()
        return loss, stats

    def _encoder_loss_sigma_held(self, z, mu, logvar, e_input) -> torch.Tensor:
        """Eq. 9 for model.g_through_sigma=false: the same value and the same gradient on E's
        parameters, but G's gradient comes through mu alone, sigma^2(x) held constant.

        E's variance head (and the layers it shares with the mean head) need log sigma^2's
        gradient, which cannot be kept from G inside one graph: it reaches E's shared layer
        and G through the same input. So E runs a second time on the detached input (same
        values, running statistics not counted twice) and only that pass carries it.
        """
        held = encoder_loss(z, mu, logvar.detach(), self.lambda_e)
        plain = self.nets.E_unwrapped
        with running_stats_untouched(plain):
            _, logvar_e = plain(e_input.detach())
        variance_part = encoder_loss(z, mu.detach(), logvar_e.float(), self.lambda_e)
        return held + (variance_part - variance_part.detach())  # adds its gradient, not its value

    def _d_real_fake(self, x_real: torch.Tensor, x_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D on real and generated batches: one forward of both when D has no batch-dependent
        layers (identical results, one kernel launch per layer instead of two), else two."""
        with self.autocast():
            if self.fuse_d:
                logits, _ = self.nets.D(torch.cat([x_real, x_fake]))
                return logits[: len(x_real)], logits[len(x_real):]
            return self.nets.D(x_real)[0], self.nets.D(x_fake)[0]

    def _d_stats(self, real_logit, fake_logit, loss_d) -> dict:
        return {
            "loss_d": loss_d.detach(),
            "logit_real": real_logit.detach().float().mean(),
            "logit_fake": fake_logit.detach().float().mean(),
        }

    # -- the two update orders -------------------------------------------------------------
    def __call__(self, x_real_batches: list[torch.Tensor], z_draws: list[torch.Tensor]) -> dict:
        if self.variant == "ali":
            stats = self._ali(x_real_batches, z_draws)
        elif self.update_order == "simultaneous":
            stats = self._simultaneous(x_real_batches[0], z_draws[0])
        else:
            stats = self._alternating(x_real_batches, z_draws)
        # 0-d tensors, still on the device: the caller copies them to the host once per tick
        return {k: v.detach().float().reshape(()) for k, v in stats.items()}

    def _alternating(self, x_real_batches, z_draws) -> dict:
        """The authors' code: D steps on fresh fakes, then a fresh z for the G+E step."""
        n = self.nets
        # Phase D: only D's parameters have gradients on.
        set_trainable([n.G, n.E], False)
        set_trainable([n.D], True)
        for x_real, z in zip(x_real_batches, z_draws[:-1]):
            with torch.no_grad(), self.autocast():
                x_fake = n.G(z)
            real_logit, fake_logit = self._d_real_fake(x_real, x_fake)
            loss_d = self.d_loss_fn(real_logit.float(), fake_logit.float())
            if self.gp_weight:
                loss_d = loss_d + self.gp_weight * self._penalty(x_real, x_fake)
            d_skipped = self.upd_d.update(loss_d)
        stats = self._d_stats(real_logit, fake_logit, loss_d)

        # Phase G+E: D frozen, gradients flow through it into G.
        set_trainable([n.D], False)
        set_trainable([n.G, n.E], True)
        z = z_draws[-1]
        with self.autocast():
            x_fake = n.G(z)
            fake_logit, h = n.D_for_g(x_fake)
            loss_g = self.g_loss_fn(fake_logit.float())
            loss_e, e_stats = self._encoder_loss(z, x_fake, h)
        ge_skipped = self.upd_ge.update(loss_g + loss_e)
        set_trainable([n.D], True)
        return {**stats, "loss_g": loss_g.detach(), **e_stats, **self._skips(d_skipped, ge_skipped)}

    def _skips(self, d_skipped: torch.Tensor, ge_skipped: torch.Tensor) -> dict:
        """1.0 where this iteration skipped a phase (averaged per tick: the skipped fraction)."""
        return {"skipped_d": d_skipped, "skipped_ge": ge_skipped}

    def _penalty(self, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP on random interpolates between real and generated samples."""
        eps = torch.rand(len(x_real), *([1] * (x_real.dim() - 1)), device=x_real.device)
        x_hat = (eps * x_real.detach() + (1 - eps) * x_fake.detach()).requires_grad_(True)
        with self.autocast():
            out, _ = self.nets.D(x_hat)
        (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
        return gradient_penalty(grad)

    def _ali(self, x_real_batches, z_draws) -> dict:
        """ALI/BiGAN (alternating): D tells (x, E(x)) from (G(z), z); then G and E together
        fool it with swapped labels. E is stochastic: z_hat = mu + sigma * eps."""
        n = self.nets

        def enc_sample(x):
            mu, logvar = n.E(x)
            return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu), logvar

        set_trainable([n.G, n.E], False)
        set_trainable([n.D], True)
        for x_real, z in zip(x_real_batches, z_draws[:-1]):
            with torch.no_grad(), self.autocast():
                x_fake = n.G(z)
                z_hat, _ = enc_sample(x_real)
            with self.autocast():
                enc_logit, _ = n.D(x_real, z_hat)
                gen_logit, _ = n.D(x_fake, z)
            loss_d = ali_d_loss(enc_logit.float(), gen_logit.float())
            d_skipped = self.upd_d.update(loss_d)
        stats = self._d_stats(enc_logit, gen_logit, loss_d)

        set_trainable([n.D], False)
        set_trainable([n.G, n.E], True)
        z = z_draws[-1]
        with self.autocast():
            z_hat, logvar = enc_sample(x_real_batches[-1])
            enc_logit, _ = n.D_for_g(x_real_batches[-1], z_hat)
            gen_logit, _ = n.D_for_g(n.G(z), z)
            loss_ge = ali_ge_loss(enc_logit.float(), gen_logit.float())
        ge_skipped = self.upd_ge.update(loss_ge)
        set_trainable([n.D], True)
        return {**stats, "loss_g": loss_ge.detach(), "sigma_mean": torch.exp(0.5 * logvar.detach().float()).mean(),
                **self._skips(d_skipped, ge_skipped)}

    def _simultaneous(self, x_real, z) -> dict:
        """Algorithm 1 as printed: one forward; D and (G, E) both step on gradients taken
        at the same parameters. Each loss is differentiated only w.r.t. its own networks."""
        n = self.nets
        set_trainable([n.G, n.D, n.E], True)
        with self.autocast():
            x_fake = n.G(z)
            real_logit, _ = n.D(x_real)
            fake_logit, h = n.D(x_fake)
            loss_d = self.d_loss_fn(real_logit.float(), fake_logit.float())
            loss_g = self.g_loss_fn(fake_logit.float())
            loss_e, e_stats = self._encoder_loss(z, x_fake, h)
        self.upd_d.zero_grad()
        self.upd_ge.zero_grad()
        self.upd_d.backward(loss_d, inputs=_params(n.D), retain_graph=True)
        self.upd_ge.backward(loss_g + loss_e, inputs=_params(n.G, n.E))
        d_skipped = self.upd_d.step()
        ge_skipped = self.upd_ge.step()
        return {**self._d_stats(real_logit, fake_logit, loss_d), "loss_g": loss_g.detach(), **e_stats,
                **self._skips(d_skipped, ge_skipped)}
