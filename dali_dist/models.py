"""Generator, discriminator (feature trunk + head) and encoder; single-device code only.

Distribution and precision are applied from outside (``distributed.py``), as in nanoGPT's
``model.py``. The discriminator returns ``(logit, features)`` so that the encoder can read
the trunk's features of the very forward pass that produced the logit (paper Section 4:
"our encoder takes the intermediate hidden representation learned by the discriminator").
"""

from __future__ import annotations

import math
from typing import Optional

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
# Image networks (28, 32 and 64 px): DCGAN-style convolutions, with the options of the
# authors' networks (an FC-first generator, an MLP discriminator head, spectral norm).

def _base_side(resolution: int) -> tuple[int, int]:
    """(side of the smallest feature map, number of 2x up/down-samplings)."""
    if resolution == 28:
        return 7, 2
    n = int(math.log2(resolution // 4))
    if 4 * 2**n != resolution:
        raise ValueError(f"unsupported resolution {resolution}")
    return 4, n


def _upsampling_blocks(ch: int, channels: int, n_up: int) -> nn.Sequential:
    """n_up stride-2 transposed convolutions, halving the channels, ending in tanh."""
    blocks: list[nn.Module] = []
    for _ in range(n_up - 1):
        blocks += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
        ch //= 2
    blocks += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*blocks)


class DCGANGenerator(nn.Module):
    """z -> a side x side map by one transposed convolution, then the upsampling stack."""

    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int):
        super().__init__()
        side, n_up = _base_side(resolution)
        ch = width * 2 ** (n_up - 1)
        self.project = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, ch, side, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)
        )
        self.blocks = _upsampling_blocks(ch, channels, n_up)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(z[:, :, None, None]))


class FCGenerator(nn.Module):
    """The authors' MNIST generator: two fully connected layers (z -> fc_width -> the smallest
    map, each with BatchNorm and ReLU), then the same upsampling stack as DCGAN's. At 28 px,
    width 64 and fc_width 1024: 64 -> 1024 -> 7x7x128 -> 14x14x64 -> 28x28x1 (6.6M weights,
    almost all in the second FC layer)."""

    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int, fc_width: int):
        super().__init__()
        side, n_up = _base_side(resolution)
        ch = width * 2 ** (n_up - 1)
        self.map_shape = (ch, side, side)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, fc_width, bias=False), nn.BatchNorm1d(fc_width), nn.ReLU(True),
            nn.Linear(fc_width, ch * side * side, bias=False), nn.BatchNorm1d(ch * side * side), nn.ReLU(True),
        )
        self.blocks = _upsampling_blocks(ch, channels, n_up)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(z).view(-1, *self.map_shape))


def _maybe_sn(layer: nn.Module, spectral: bool) -> nn.Module:
    if not spectral:
        return layer
    _dcgan_init(layer)  # before the parametrization, whose power iteration starts from this weight
    return nn.utils.parametrizations.spectral_norm(layer)


def image_trunk(resolution: int, channels: int, width: int, *, norm: str, slope: float) -> tuple[nn.Sequential, tuple]:
    """Strided 4x4 convolutions down to the smallest map (D's features h): (trunk, map shape).
    norm='batch' puts BatchNorm after every convolution but the first (DCGAN);
    norm='spectral' puts spectral norm on every convolution and no BatchNorm (SN-GAN)."""
    side, n_down = _base_side(resolution)
    sn = norm == "spectral"
    layers: list[nn.Module] = [_maybe_sn(nn.Conv2d(channels, width, 4, 2, 1), sn), nn.LeakyReLU(slope, True)]
    ch = width
    for _ in range(n_down - 1):
        if sn:
            layers += [_maybe_sn(nn.Conv2d(ch, ch * 2, 4, 2, 1), sn), nn.LeakyReLU(slope, True)]
        else:
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(slope, True)]
        ch *= 2
    return nn.Sequential(*layers), (ch, side, side)


def image_head(feature_shape: tuple, *, kind: str, width: int, norm: str, slope: float) -> nn.Module:
    """D's head on the trunk's map: 'conv' is one linear convolution over the whole map
    (DCGAN); 'mlp' is the authors' MNIST head, FC -> width, BatchNorm (or spectral norm),
    LeakyReLU, FC -> 1. Both return one logit per image, shape (N, 1, ...) flattened later."""
    ch, side, _ = feature_shape
    sn = norm == "spectral"
    if kind == "conv":
        return _maybe_sn(nn.Conv2d(ch, 1, side, 1, 0), sn)
    hidden: list[nn.Module] = [_maybe_sn(nn.Linear(ch * side * side, width, bias=sn), sn)]
    if not sn:
        hidden.append(nn.BatchNorm1d(width))
    return nn.Sequential(nn.Flatten(), *hidden, nn.LeakyReLU(slope, True), _maybe_sn(nn.Linear(width, 1), sn))


class ImageDiscriminator(nn.Module):
    """Strided-conv trunk down to the smallest map (the features h), then a conv or MLP head."""

    def __init__(self, resolution: int, channels: int, width: int, *, head: str = "conv", head_width: int = 1024,
                 norm: str = "batch", slope: float = 0.2):
        super().__init__()
        self.features, self.feature_shape = image_trunk(resolution, channels, width, norm=norm, slope=slope)
        self.head = image_head(self.feature_shape, kind=head, width=head_width, norm=norm, slope=slope)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h).flatten(), h


DCGANDiscriminator = ImageDiscriminator  # the name older code and tests use


class ConvEncoder(nn.Module):
    """A conv layer on D's feature map, then two separate fully connected heads for mu and
    log sigma^2 (paper Section 4).

    arch='conv': 3x3 conv keeping the channels, LeakyReLU; heads FC -> head_width, LeakyReLU, FC.
    arch='conv-bn' (the authors' MNIST encoder): 3x3 conv halving the channels, BatchNorm,
    LeakyReLU; heads FC -> head_width, LeakyReLU, BatchNorm, FC."""

    def __init__(self, feature_shape: tuple[int, int, int], latent_dim: int, logvar_range: tuple[float, float],
                 *, arch: str = "conv", head_width: Optional[int] = None, slope: float = 0.2):
        super().__init__()
        ch, side, _ = feature_shape
        hidden = head_width or max(2 * latent_dim, 256)
        if arch == "conv":
            out_ch = ch
            self.conv = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(slope, True))
        else:
            out_ch = max(ch // 2, 1)
            self.conv = nn.Sequential(nn.Conv2d(ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch),
                                      nn.LeakyReLU(slope, True))
        flat = out_ch * side * side

        def head() -> nn.Sequential:
            if arch == "conv":
                return nn.Sequential(nn.Linear(flat, hidden), nn.LeakyReLU(slope, True), nn.Linear(hidden, latent_dim))
            return nn.Sequential(nn.Linear(flat, hidden), nn.LeakyReLU(slope, True), nn.BatchNorm1d(hidden),
                                 nn.Linear(hidden, latent_dim))

        self.mu, self.logvar = head(), head()
        self.logvar_range = logvar_range

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.conv(h).flatten(1)
        return self.mu(f), self.logvar(f).clamp(*self.logvar_range)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): N(0, 0.02) weights, BN scale N(1, 0.02).
    Spectral-normed layers were initialised before their parametrization (``_maybe_sn``)."""
    if nn.utils.parametrize.is_parametrized(module):
        return
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------
# ALI / BiGAN: a joint discriminator on (x, z) and an encoder that reads x itself

class JointDiscriminator(nn.Module):
    """D(x, z): x features (the family's trunk) and z features, joined by an MLP."""

    def __init__(self, x_trunk: nn.Module, x_dim: int, latent_dim: int, hidden: int, slope: float = 0.2):
        super().__init__()
        self.features = x_trunk
        self.z_net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(slope), nn.Linear(hidden, hidden), nn.LeakyReLU(slope))
        self.joint = nn.Sequential(nn.Linear(x_dim + hidden, hidden), nn.LeakyReLU(slope))
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


def encode(cfg: Config, D: nn.Module, E: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of q(z|x): DALI's encoder reads D's trunk features (unless model.e_input
    is image); ALI's reads x."""
    if cfg.encoder_reads_image:
        return E(x)
    return E(D(x)[1])


def image_networks(cfg: Config) -> tuple[nn.Module, ImageDiscriminator]:
    """G and D of the image family, as the config's model section describes them."""
    m, res, ch = cfg.model, cfg.data.resolution, cfg.data.channels
    if m.g_arch == "fc":
        G: nn.Module = FCGenerator(m.latent_dim, res, ch, m.width, m.g_fc_width)
    else:
        G = DCGANGenerator(m.latent_dim, res, ch, m.width)
    D = ImageDiscriminator(res, ch, m.width, head=m.d_head, head_width=m.d_head_width, norm=m.d_norm,
                           slope=m.lrelu_slope)
    return G, D


def image_encoder(cfg: Config, feature_shape: tuple) -> ConvEncoder:
    m = cfg.model
    return ConvEncoder(feature_shape, m.latent_dim, (m.logvar_min, m.logvar_max), arch=m.e_arch,
                       head_width=m.e_head_width, slope=m.lrelu_slope)


def _build_ali(cfg: Config) -> tuple[nn.Module, nn.Module, nn.Module]:
    m = cfg.model
    if m.family == "mlp":
        G = MLPGenerator(m.latent_dim, m.g_hidden, m.g_norm)
        x_trunk = MLPDiscriminator(m.d_hidden).features
        D = JointDiscriminator(x_trunk, m.d_hidden[-1], m.latent_dim, m.d_hidden[-1])
        return G, D, standalone_mlp_encoder(cfg)
    # the same G, the same x trunk as DALI's D; the joint head is as wide as DALI's MLP head
    G, ref = image_networks(cfg)
    flat = ref.feature_shape[0] * ref.feature_shape[1] * ref.feature_shape[2]
    width = m.d_head_width if m.d_head == "mlp" else 512
    D = JointDiscriminator(ref.features, flat, m.latent_dim, width, slope=m.lrelu_slope)
    return G, D, standalone_image_encoder(cfg)


def standalone_image_encoder(cfg: Config) -> StandaloneEncoder:
    """An image encoder with a trunk of its own, built like D's (BatchNorm), then the heads."""
    m = cfg.model
    e_trunk, e_shape = image_trunk(cfg.data.resolution, cfg.data.channels, m.width, norm="batch", slope=m.lrelu_slope)
    return StandaloneEncoder(e_trunk, image_encoder(cfg, e_shape))


def standalone_mlp_encoder(cfg: Config) -> StandaloneEncoder:
    m = cfg.model
    return StandaloneEncoder(MLPDiscriminator(m.d_hidden).features,
                             MLPEncoder(m.d_hidden[-1], m.e_hidden, m.latent_dim, (m.logvar_min, m.logvar_max)))


def build_models(cfg: Config) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """(G, D, E) for a config; E is None for the encoder-free ``gan`` variant. Image networks
    get the DCGAN initialisation (in the order G, D, E)."""
    nets = _networks(cfg)
    if cfg.model.family != "mlp":
        for net in nets:
            if net is not None:
                net.apply(_dcgan_init)
    return nets


def parameter_count(cfg: Config) -> int:
    """Weights of G, D and E for a config, counted on the meta device: no memory is
    allocated and no random number is drawn, so config validation can refuse a size that
    would not fit before anything is built."""
    with torch.device("meta"):
        return sum(p.numel() for net in _networks(cfg) if net is not None for p in net.parameters())


def _networks(cfg: Config) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    m = cfg.model
    if m.variant == "ali":
        return _build_ali(cfg)
    logvar_range = (m.logvar_min, m.logvar_max)
    if m.family == "mlp":
        G = MLPGenerator(m.latent_dim, m.g_hidden, m.g_norm)
        D = MLPDiscriminator(m.d_hidden)
        if not cfg.has_encoder:
            E = None
        elif cfg.encoder_reads_image:
            E = standalone_mlp_encoder(cfg)
        else:
            E = MLPEncoder(D.feature_dim, m.e_hidden, m.latent_dim, logvar_range)
    else:
        G, D = image_networks(cfg)
        if not cfg.has_encoder:
            E = None
        elif cfg.encoder_reads_image:
            E = standalone_image_encoder(cfg)
        else:
            E = image_encoder(cfg, D.feature_shape)
    return G, D, E


def sample_shape(cfg: Config) -> tuple[int, ...]:
    """Shape of one data sample: (2,) for the mixture, (C, H, W) for images."""
    if cfg.model.family == "mlp":
        return (2,)
    return (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
