"""Inference with a trained DALI model: codes, reconstructions, posterior samples, paths.

    from dali_dist.inference import DaliModel
    model = DaliModel.load("runs/fmnist/checkpoints/step-30000", device="cuda")
    mu, sigma = model.encode(x)                 # x: (N, C, H, W) in [-1, 1] (or (N, 2) points)
    x_rec = model.reconstruct(x)                # G(mu(x))       (paper Section 3.5)
    xs = model.posterior_samples(x, k=8)        # G(mu + sigma * eps), shape (N, k, ...)
    path = model.interpolate(x[0], x[1], 10)    # G of a straight line between the two codes
    x_new = model.generate(16, seed=0)

Everything runs batched, without gradients, on the model's device; inputs on another device
are moved, outputs come back on the model's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .checkpoint import Exported, load_export
from .errors import UserError
from .generate import per_sample_latents
from .models import encode
from .seeding import generator


class DaliModel:
    def __init__(self, exported: Exported, batch_size: int = 256):
        self.exp = exported
        self.batch_size = batch_size
        self.shape = tuple(exported.meta["sample_shape"])
        self.latent_dim = exported.cfg.model.latent_dim
        self.device = next(exported.G.parameters()).device

    @classmethod
    def load(cls, checkpoint: Path | str, device: str | torch.device = "cpu", batch_size: int = 256) -> "DaliModel":
        return cls(load_export(Path(checkpoint), device), batch_size)

    # -- checks ----------------------------------------------------------------------------
    def _need_encoder(self) -> None:
        if self.exp.E is None:
            raise UserError(f"{self.exp.path}: the {self.exp.cfg.model.variant!r} variant has no encoder, "
                            "so it cannot encode or reconstruct (train dali, dali-l2 or dali-f)")

    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise UserError(f"expected a tensor of shape (N, {', '.join(map(str, self.shape))}), got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.shape:
            want = "(N, " + ", ".join(map(str, self.shape)) + ")"
            raise UserError(f"inputs have shape {tuple(x.shape)}, but this model takes {want}"
                            + (" images in [-1, 1]" if len(self.shape) == 3 else " points"))
        if x.dtype == torch.uint8:  # accept raw uint8 images too
            x = x.float() / 127.5 - 1.0
        return x.float()

    def _batched(self, x: torch.Tensor, fn) -> list:
        return [fn(x[i:i + self.batch_size].to(self.device)) for i in range(0, len(x), self.batch_size)]

    # -- the API ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu(x), sigma(x)) of q(z|x); for dali-l2 sigma is 1 (identity covariance)."""
        self._need_encoder()
        x = self._check_images(x)

        def one(b):
            mu, logvar = encode(self.exp.cfg, self.exp.D, self.exp.E, b)
            if self.exp.cfg.model.variant == "dali-l2":
                return mu, torch.ones_like(mu)
            return mu, torch.exp(0.5 * logvar)

        parts = self._batched(x, one)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise UserError(f"codes have shape {tuple(z.shape)}, but this model takes (N, {self.latent_dim})")
        return torch.cat(self._batched(z.float(), self.exp.G)) if len(z) else z.new_zeros((0, *self.shape))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """G(mu(x))."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    @torch.no_grad()
    def posterior_samples(self, x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
        """k samples G(mu + sigma * eps) per input, shape (N, k, ...): more samples close to x."""
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        mu, sigma = self.encode(x)
        eps = torch.randn(len(mu), k, self.latent_dim, generator=generator("posterior", seed)).to(self.device)
        z = (mu[:, None] + sigma[:, None] * eps).reshape(-1, self.latent_dim)
        return self.decode(z).reshape(len(mu), k, *self.shape)

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
        """G on the straight line between mu(a) and mu(b), endpoints included: (steps, ...)."""
        if steps < 2:
            raise UserError(f"steps must be >= 2, got {steps}")
        pair = torch.stack([self._check_images(a[None])[0], self._check_images(b[None])[0]])
        mu, _ = self.encode(pair)
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]
        return self.decode((1 - t) * mu[0] + t * mu[1])

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """n samples; z of sample i seeded by (seed, i), as `dali-dist sample` draws them."""
        if z is None:
            z = per_sample_latents(range(n), self.latent_dim, seed)
        return self.decode(z.to(self.device))
