"""Generator, discriminator (feature trunk + head) and encoder; single-device code only.

Distribution and precision are applied from outside (``distributed.py``), as in nanoGPT's
``model.py``. The discriminator returns ``(logit, features)`` so that the encoder can read
the trunk's features of the very forward pass that produced the logit (paper Section 4:
"our encoder takes the intermediate hidden representation learned by the discriminator").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import Config


# ----------------------------------------------------------------------------------------
# MLP family (the 2D mixture)

def _mlp(sizes: list[int], act: type[nn.Module], norm: str = "none", final_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        last = i == len(sizes) - 2
        if not last or final_act:
            if norm == "batch":
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, hidden: list[int], norm: str, out_dim: int = 2):
        super().__init__()
        self.net = nn.Sequential(_mlp([latent_dim, *hidden], nn.ReLU, norm), nn.Linear(hidden[-1], out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    def __init__(self, hidden: list[int], in_dim: int = 2):
        super().__init__()
        self.features = _mlp([in_dim, *hidden], lambda: nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden[-1], 1)
        self.feature_dim = hidden[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h).squeeze(1), h


class MLPEncoder(nn.Module):
    """Two separate heads for mu and log sigma^2 on a shared hidden stack (paper Section 4)."""

    def __init__(self, feature_dim: int, hidden: list[int], latent_dim: int, logvar_range: tuple[float, float]):
        super().__init__()
        self.body = _mlp([feature_dim, *hidden], lambda: nn.LeakyReLU(0.2))  # empty: linear heads
        width = hidden[-1] if hidden else feature_dim
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)
        self.logvar_range = logvar_range

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.body(h.flatten(1))
        return self.mu(b), self.logvar(b).clamp(*self.logvar_range)


# ----------------------------------------------------------------------------------------
# DCGAN family (28, 32 and 64 px images)

def _base_side(resolution: int) -> tuple[int, int]:
    """(side of the smallest feature map, number of 2x up/down-samplings)."""
    if resolution == 28:
        return 7, 2
    n = int(math.log2(resolution // 4))
    if 4 * 2**n != resolution:
        raise ValueError(f"unsupported resolution {resolution}")
    return 4, n


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int):
        super().__init__()
        side, n_up = _base_side(resolution)
        ch = width * 2 ** (n_up - 1) if n_up > 0 else width
        self.project = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, ch, side, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)
        )
        blocks: list[nn.Module] = []
        for _ in range(n_up - 1):
            blocks += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        blocks += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(z[:, :, None, None]))


class DCGANDiscriminator(nn.Module):
    """Strided-conv trunk down to the smallest map (the features h), then a linear head."""

    def __init__(self, resolution: int, channels: int, width: int):
        super().__init__()
        side, n_down = _base_side(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.feature_shape = (ch, side, side)
        self.head = nn.Conv2d(ch, 1, side, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h).flatten(), h


class ConvEncoder(nn.Module):
    """A conv layer on D's feature map, then two separate fully connected heads."""

    def __init__(self, feature_shape: tuple[int, int, int], latent_dim: int, logvar_range: tuple[float, float]):
        super().__init__()
        ch, side, _ = feature_shape
        self.conv = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2, True))
        flat = ch * side * side
        hidden = max(2 * latent_dim, 256)
        self.mu = nn.Sequential(nn.Linear(flat, hidden), nn.LeakyReLU(0.2, True), nn.Linear(hidden, latent_dim))
        self.logvar = nn.Sequential(nn.Linear(flat, hidden), nn.LeakyReLU(0.2, True), nn.Linear(hidden, latent_dim))
        self.logvar_range = logvar_range

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.conv(h).flatten(1)
        return self.mu(f), self.logvar(f).clamp(*self.logvar_range)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): N(0, 0.02) weights, BN scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------
# ALI / BiGAN: a joint discriminator on (x, z) and an encoder that reads x itself

class JointDiscriminator(nn.Module):
    """D(x, z): x features (the family's trunk) and z features, joined by an MLP."""

    def __init__(self, x_trunk: nn.Module, x_dim: int, latent_dim: int, hidden: int):
        super().__init__()
        self.features = x_trunk
        self.z_net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(nn.Linear(x_dim + hidden, hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.joint(torch.cat([self.features(x).flatten(1), self.z_net(z)], dim=1))
        return self.head(h).squeeze(1), h


class StandaloneEncoder(nn.Module):
    """An encoder with its own trunk on x (ALI), instead of reading D's features."""

    def __init__(self, trunk: nn.Module, heads: nn.Module):
        super().__init__()
        self.trunk, self.heads = trunk, heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.trunk(x))


def encode(variant: str, D: nn.Module, E: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of q(z|x): DALI's encoder reads D's trunk features; ALI's reads x."""
    if variant == "ali":
        return E(x)
    return E(D(x)[1])


def _build_ali(cfg: Config) -> tuple[nn.Module, nn.Module, nn.Module]:
    m = cfg.model
    logvar_range = (m.logvar_min, m.logvar_max)
    if m.family == "mlp":
        G = MLPGenerator(m.latent_dim, m.g_hidden, m.g_norm)
        x_trunk = MLPDiscriminator(m.d_hidden).features
        D = JointDiscriminator(x_trunk, m.d_hidden[-1], m.latent_dim, m.d_hidden[-1])
        e_trunk = MLPDiscriminator(m.d_hidden).features
        E = StandaloneEncoder(e_trunk, MLPEncoder(m.d_hidden[-1], m.e_hidden, m.latent_dim, logvar_range))
        return G, D, E
    res, ch = cfg.data.resolution, cfg.data.channels
    G = DCGANGenerator(m.latent_dim, res, ch, m.width)
    ref = DCGANDiscriminator(res, ch, m.width)
    flat = ref.feature_shape[0] * ref.feature_shape[1] * ref.feature_shape[2]
    D = JointDiscriminator(ref.features, flat, m.latent_dim, 512)
    e_ref = DCGANDiscriminator(res, ch, m.width)
    E = StandaloneEncoder(e_ref.features, ConvEncoder(e_ref.feature_shape, m.latent_dim, logvar_range))
    for net in (G, D, E):
        net.apply(_dcgan_init)
    return G, D, E


def build_models(cfg: Config) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """(G, D, E) for a config; E is None for the encoder-free ``gan`` variant."""
    m = cfg.model
    if m.variant == "ali":
        return _build_ali(cfg)
    logvar_range = (m.logvar_min, m.logvar_max)
    if m.family == "mlp":
        G = MLPGenerator(m.latent_dim, m.g_hidden, m.g_norm)
        D = MLPDiscriminator(m.d_hidden)
        E = MLPEncoder(D.feature_dim, m.e_hidden, m.latent_dim, logvar_range) if cfg.has_encoder else None
    else:
        res, ch = cfg.data.resolution, cfg.data.channels
        G = DCGANGenerator(m.latent_dim, res, ch, m.width)
        D = DCGANDiscriminator(res, ch, m.width)
        E = ConvEncoder(D.feature_shape, m.latent_dim, logvar_range) if cfg.has_encoder else None
        for net in (G, D, E):
            if net is not None:
                net.apply(_dcgan_init)
    return G, D, E


def sample_shape(cfg: Config) -> tuple[int, ...]:
    """Shape of one data sample: (2,) for the mixture, (C, H, W) for images."""
    if cfg.model.family == "mlp":
        return (2,)
    return (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
