"""Shapes of every network family and resolution, and that E reads D's trunk features."""

import pytest
import torch

from dali_dist.config import load_config
from dali_dist.models import build_models, parameter_count, sample_shape


@pytest.mark.parametrize("res, ch", [(28, 1), (32, 3), (64, 3)])
def test_dcgan_shapes(res, ch):
    cfg = load_config("mnist", ["model.width=8", "model.latent_dim=16", f"data.resolution={res}", f"data.channels={ch}"], data="x")
    G, D, E = build_models(cfg)
    z = torch.randn(3, 16)
    x = G(z)
    assert x.shape == (3, *sample_shape(cfg)) and x.abs().max() <= 1
    logit, h = D(x)
    assert logit.shape == (3,) and h.shape[1:] == D.feature_shape
    mu, logvar = E(h)
    assert mu.shape == logvar.shape == (3, 16)


def test_mlp_shapes_and_logvar_clamp():
    cfg = load_config("grid2d", ["model.logvar_min=-2", "model.logvar_max=1"])
    G, D, E = build_models(cfg)
    x = G(torch.randn(5, cfg.model.latent_dim))
    logit, h = D(100 * x)
    mu, logvar = E(h)
    assert x.shape == (5, 2) and logit.shape == (5,) and mu.shape == (5, cfg.model.latent_dim)
    assert logvar.min() >= -2 and logvar.max() <= 1


def test_gan_variant_builds_no_encoder():
    cfg = load_config("grid2d", ["model.variant=gan"])
    assert build_models(cfg)[2] is None


AUTHORS_MNIST = ["model.g_arch=fc", "model.d_head=mlp", "model.d_head_width=1024", "model.e_arch=conv-bn",
                 "model.e_head_width=64", "model.lrelu_slope=0.1", "model.latent_dim=64", "model.width=64"]


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_authors_mnist_networks_have_the_published_layer_sizes():
    """The FC-first G (64 -> 1024 -> 7x7x128 -> 14x14x64 -> 28x28x1) and the MLP-head D
    (two convs, FC 6272 -> 1024 -> 1), counted layer by layer from the published shapes."""
    cfg = load_config("mnist", AUTHORS_MNIST, data="x")
    G, D, E = build_models(cfg)
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    g_expected = (linear(64, 1024, False) + bn(1024) + linear(1024, 6272, False) + bn(6272)
                  + 128 * 64 * 16 + bn(64) + 64 * 1 * 16 + 1)
    d_expected = (1 * 64 * 16 + 64) + (64 * 128 * 16 + bn(128)) + linear(6272, 1024, False) + bn(1024) + linear(1024, 1)
    e_head = linear(64 * 49, 64) + bn(64) + linear(64, 64)
    e_expected = 128 * 64 * 9 + bn(64) + 2 * e_head
    assert (_count(G), _count(D), _count(E)) == (g_expected, d_expected, e_expected)
    leaky = [m for m in D.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.1 for m in leaky)
    x = G(torch.randn(4, 64))
    logit, h = D(x)
    assert x.shape == (4, 1, 28, 28) and logit.shape == (4,) and h.shape == (4, 128, 7, 7)
    assert E(h)[0].shape == (4, 64)


def test_preset_mnist_is_the_authors_networks_and_optimiser():
    cfg = load_config("mnist", data="x")
    m, o = cfg.model, cfg.optim
    assert (m.g_arch, m.d_head, m.d_head_width, m.e_arch, m.e_head_width, m.lrelu_slope) == ("fc", "mlp", 1024, "conv-bn", 64, 0.1)
    assert (o.beta1, o.beta2, o.schedule, o.schedule_e, cfg.train.batch_size) == (0.6, 0.999, "inv-sqrt-epoch", False, 100)


@pytest.mark.parametrize("res, ch", [(28, 1), (32, 3), (64, 3)])
@pytest.mark.parametrize("variant", ["dali", "gan", "ali"])
def test_every_option_builds_at_every_resolution(res, ch, variant):
    cfg = load_config("mnist", ["model.width=8", "model.latent_dim=16", f"data.resolution={res}", f"data.channels={ch}",
                                "model.g_arch=fc", "model.g_fc_width=32", "model.d_head=mlp", "model.d_head_width=16",
                                "model.d_norm=spectral", f"model.variant={variant}"], data="x")
    G, D, E = build_models(cfg)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, ch, res, res)
    if variant == "ali":
        assert D(x, torch.randn(3, 16))[0].shape == (3,)
        assert E(x)[0].shape == (3, 16)
    else:
        logit, h = D(x)
        assert logit.shape == (3,)
        if E is not None:
            assert E(h)[1].shape == (3, 16)


def test_spectral_norm_bounds_every_discriminator_layer():
    """With d_norm=spectral, D has no BatchNorm and each layer's weight has spectral norm ~1
    (after enough power iterations), so D is 1-Lipschitz per layer as SN-GAN's is."""
    cfg = load_config("cifar10", ["data.resolution=32", "model.width=8", "model.d_norm=spectral", "model.d_head=mlp",
                                  "model.d_head_width=16"], data="x")
    _, D, _ = build_models(cfg)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules())
    layers = [m for m in D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    D.train()
    with torch.no_grad():
        for _ in range(50):  # each training-mode forward runs one power iteration per layer
            D(torch.randn(2, 3, 32, 32))
    D.eval()
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_ali_joint_head_is_as_wide_as_the_mlp_head():
    cfg = load_config("mnist", ["model.variant=ali", "model.d_head=mlp", "model.d_head_width=96"], data="x")
    _, D, _ = build_models(cfg)
    assert D.head.in_features == 96 and D.z_net[0].out_features == 96


@pytest.mark.parametrize("preset, sets", [("mnist", ["model.width=8", "model.latent_dim=16"]), ("grid2d", [])])
def test_encoder_on_the_image_has_its_own_trunk_and_reads_x(preset, sets):
    """model.e_input=image: E owns a trunk built like D's (no parameter shared with D) and
    encode() feeds it x; the default reads D's feature map."""
    from dali_dist.models import encode

    cfg = load_config(preset, [*sets, "model.e_input=image"], **({"data": "x"} if preset == "mnist" else {}))
    G, D, E = build_models(cfg)
    assert cfg.encoder_reads_image and not {id(p) for p in E.parameters()} & {id(p) for p in D.parameters()}
    assert _count(E.trunk) == _count(D.features)
    for net in (G, D, E):
        net.eval()
    x = G(torch.randn(4, cfg.model.latent_dim))
    torch.testing.assert_close(encode(cfg, D, E, x)[0], E(x)[0])
    default = load_config(preset, sets, **({"data": "x"} if preset == "mnist" else {}))
    G2, D2, E2 = build_models(default)
    for net in (D2, E2):
        net.eval()
    assert not default.encoder_reads_image
    torch.testing.assert_close(encode(default, D2, E2, x)[0], E2(D2(x)[1])[0])


@pytest.mark.parametrize("preset, sets", [("mnist", []), ("mnist", ["model.variant=ali"]), ("mnist", ["model.variant=gan"]),
                                          ("mnist", ["model.e_input=image"]), ("cifar10", []), ("grid2d", ["model.variant=ali"])])
def test_parameter_count_is_the_built_networks_and_draws_no_random_number(preset, sets):
    cfg = load_config(preset, sets, data="x")
    torch.manual_seed(7)
    counted = parameter_count(cfg)
    after_count = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(1), after_count)  # the global generator was not advanced
    nets = build_models(cfg)
    assert counted == sum(p.numel() for net in nets if net is not None for p in net.parameters())
