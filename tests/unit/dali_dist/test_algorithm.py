"""Gradient routing of Algorithm 1, checked against a hand-written reference iteration."""

import copy

import pytest
import torch

from dali_dist.algorithm import DaliStep, Networks
from dali_dist.config import Config
from dali_dist.losses import d_loss_gan, encoder_loss, g_loss_gan
from dali_dist.models import build_models

LR = 0.05


def make(variant="dali", order="alternating", seed=0, adversarial="gan", gp_weight=10.0, e_input="trunk",
         g_through_sigma=True):
    torch.manual_seed(seed)
    cfg = Config()
    cfg.model.variant = variant
    cfg.model.e_input = e_input
    cfg.model.latent_dim = 3
    cfg.model.g_hidden = [16]
    cfg.model.d_hidden = [16, 8]
    cfg.model.e_hidden = [8]
    G, D, E = build_models(cfg)
    ge_params = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
    nets = Networks(G, D, E, torch.optim.SGD(D.parameters(), lr=LR), torch.optim.SGD(ge_params, lr=LR))
    step = DaliStep(nets, variant=variant, lambda_e=1 / 3, update_order=order, adversarial=adversarial, gp_weight=gp_weight,
                    encoder_reads_image=cfg.encoder_reads_image, g_through_sigma=g_through_sigma)
    return cfg, nets, step


def batch(seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)


def snap(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("e_input", ["trunk", "image"])
def test_alternating_iteration_equals_reference(e_input):
    _, nets, step = make(e_input=e_input)
    G, D, E = (copy.deepcopy(m) for m in (nets.G, nets.D, nets.E))
    x, z_d, z_g = batch()
    step([x], [z_d, z_g])

    # Reference: plain autograd, explicit SGD, same order.
    ld = d_loss_gan(D(x)[0], D(G(z_d).detach())[0])
    for p, g in zip(D.parameters(), torch.autograd.grad(ld, list(D.parameters()))):
        p.data -= LR * g
    x_fake = G(z_g)
    logit, h = D(x_fake)
    mu, logvar = E(h if e_input == "trunk" else x_fake)  # image: E's own trunk on G(z)
    lrec = g_loss_gan(logit) + encoder_loss(z_g, mu, logvar, 1 / 3)
    ge = list(G.parameters()) + list(E.parameters())
    for p, g in zip(ge, torch.autograd.grad(lrec, ge)):
        p.data -= LR * g
    for mine, ref in ((nets.G, G), (nets.D, D), (nets.E, E)):
        for a, b in zip(mine.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("e_input", ["trunk", "image"])
@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_sigma_held_for_G_gives_E_the_full_eq9_gradient_and_G_the_mu_path_only(order, e_input):
    _, nets, step = make(order=order, e_input=e_input, g_through_sigma=False)
    G, D, E = (copy.deepcopy(m) for m in (nets.G, nets.D, nets.E))
    x, z_d, z_g = batch()
    stats = step([x], [z_d, z_g] if order == "alternating" else [z_d])
    z = z_g if order == "alternating" else z_d

    # Reference: E's gradient from eq. 9 as it is; G's from eq. 9 with log sigma^2 a constant.
    ld = d_loss_gan(D(x)[0], D(G(z_d).detach())[0])
    gd = torch.autograd.grad(ld, list(D.parameters()))
    if order == "alternating":
        for p, g in zip(D.parameters(), gd):
            p.data -= LR * g
    x_fake = G(z)
    logit, h = D(x_fake)
    mu, logvar = E(h if e_input == "trunk" else x_fake)
    full = encoder_loss(z, mu, logvar, 1 / 3)
    g_grads = torch.autograd.grad(g_loss_gan(logit) + encoder_loss(z, mu, logvar.detach(), 1 / 3),
                                  list(G.parameters()), retain_graph=True)
    e_grads = torch.autograd.grad(full, list(E.parameters()))
    if order == "simultaneous":
        for p, g in zip(D.parameters(), gd):
            p.data -= LR * g
    for p, g in zip(list(G.parameters()) + list(E.parameters()), g_grads + e_grads):
        p.data -= LR * g
    for mine, ref in ((nets.G, G), (nets.D, D), (nets.E, E)):
        for a, b in zip(mine.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(stats["loss_e"], full.detach())  # the reported L_e is eq. 9's value

    # ... and it is a different update of G from the paper's (E's is the same).
    _, nets_paper, step_paper = make(order=order, e_input=e_input)
    step_paper([x], [z_d, z_g] if order == "alternating" else [z_d])
    assert not same(snap(nets_paper.G), snap(nets.G))
    for a, b in zip(nets_paper.E.parameters(), nets.E.parameters()):
        torch.testing.assert_close(a, b)


def test_sigma_held_counts_the_encoders_batchnorm_statistics_once():
    from dali_dist.config import load_config

    def run(g_through_sigma):
        torch.manual_seed(0)
        cfg = load_config("mnist", ["model.width=8", "model.latent_dim=4", "model.g_fc_width=16",
                                    "model.d_head_width=16", "model.e_head_width=8"], data="x")
        G, D, E = build_models(cfg)
        nets = Networks(G, D, E, torch.optim.SGD(D.parameters(), lr=LR),
                        torch.optim.SGD(list(G.parameters()) + list(E.parameters()), lr=LR))
        step = DaliStep(nets, variant="dali", lambda_e=0.25, update_order="alternating", g_through_sigma=g_through_sigma)
        g = torch.Generator().manual_seed(1)
        step([torch.rand(6, 1, 28, 28, generator=g) * 2 - 1], [torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)])
        return nets

    held, paper = run(False), run(True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in held.E.modules())  # conv-bn: E's shared layer has BN
    for (k, a), b in zip(held.E.state_dict().items(), paper.E.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)  # E: same weights, same running statistics
    assert not same(snap(held.G), snap(paper.G))


def test_simultaneous_iteration_equals_reference():
    _, nets, step = make(order="simultaneous")
    G, D, E = (copy.deepcopy(m) for m in (nets.G, nets.D, nets.E))
    x, z, _ = batch()
    step([x], [z])
    x_fake = G(z)
    real_logit, _ = D(x)
    fake_logit, h = D(x_fake)
    mu, logvar = E(h)
    ld = d_loss_gan(real_logit, fake_logit)
    lrec = g_loss_gan(fake_logit) + encoder_loss(z, mu, logvar, 1 / 3)
    gd = torch.autograd.grad(ld, list(D.parameters()), retain_graph=True)
    ge_params = list(G.parameters()) + list(E.parameters())
    gge = torch.autograd.grad(lrec, ge_params)
    for p, g in zip(list(D.parameters()) + ge_params, gd + gge):
        p.data -= LR * g
    for mine, ref in ((nets.G, G), (nets.D, D), (nets.E, E)):
        for a, b in zip(mine.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("e_input", ["trunk", "image"])
@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_each_phase_moves_only_its_networks(order, e_input):
    _, nets, step = make(order=order, e_input=e_input)
    g0, d0, e0 = snap(nets.G), snap(nets.D), snap(nets.E)
    seen = {}
    d_step, ge_step = nets.opt_d.step, nets.opt_ge.step

    def on_d_step():
        seen["d_grads_on_G"] = [p.grad for p in nets.G.parameters()]
        seen["d_grads_on_E"] = [p.grad for p in nets.E.parameters()]
        d_step()
        seen["G_after_d"], seen["E_after_d"] = snap(nets.G), snap(nets.E)

    def on_ge_step():
        seen["ge_grads_on_D"] = [p.grad for p in nets.D.parameters()]
        seen["D_before_ge"] = snap(nets.D)
        ge_step()

    nets.opt_d.step, nets.opt_ge.step = on_d_step, on_ge_step
    x, z1, z2 = batch()
    step([x], [z1, z2] if order == "alternating" else [z1])
    # The G+E optimizer step did not move D (trunk included).
    assert same(seen["D_before_ge"], snap(nets.D))
    if order == "alternating":
        # ... and the G+E backward put no gradient on any D parameter.
        assert all(g is None for g in seen["ge_grads_on_D"])
        # The D step saw no gradient on G or E and moved neither.
        assert all(g is None for g in seen["d_grads_on_G"] + seen["d_grads_on_E"])
        assert same(seen["G_after_d"], g0) and same(seen["E_after_d"], e0)
    assert not same(snap(nets.D), d0) and not same(snap(nets.G), g0) and not same(snap(nets.E), e0)


def test_encoder_loss_alone_sends_gradient_into_G_but_not_into_D_trunk():
    _, nets, step = make()
    step.g_loss_fn = lambda logit: 0.0 * logit.sum()  # keep only L_e
    grads = {}
    ge_step = nets.opt_ge.step

    def on_ge_step():
        grads["G"] = [p.grad.abs().sum().item() for p in nets.G.parameters()]
        grads["E"] = [p.grad.abs().sum().item() for p in nets.E.parameters()]
        grads["D"] = [p.grad for p in nets.D.features.parameters()]
        ge_step()

    nets.opt_ge.step = on_ge_step
    x, z1, z2 = batch()
    step([x], [z1, z2])
    assert sum(grads["G"]) > 0 and sum(grads["E"]) > 0
    assert all(g is None for g in grads["D"])


def test_gan_variant_has_no_encoder_and_still_trains():
    _, nets, step = make(variant="gan")
    assert nets.E is None
    G, D = copy.deepcopy(nets.G), copy.deepcopy(nets.D)
    x, z1, z2 = batch()
    stats = step([x], [z1, z2])
    ld = d_loss_gan(D(x)[0], D(G(z1).detach())[0])
    for p, g in zip(D.parameters(), torch.autograd.grad(ld, list(D.parameters()))):
        p.data -= LR * g
    assert "loss_e" not in stats
    torch.testing.assert_close(stats["loss_d"], ld.detach())
    torch.testing.assert_close(stats["loss_g"], g_loss_gan(D(G(z2))[0]).detach())
    assert not same(snap(nets.G), snap(G))  # G moved


def test_l2_variant_uses_no_variance():
    _, nets, step = make(variant="dali-l2")
    G, D, E = (copy.deepcopy(m) for m in (nets.G, nets.D, nets.E))
    logvar_head = snap(nets.E.logvar)
    x, z1, z2 = batch()
    stats = step([x], [z1, z2])
    # the reported L_e is lambda/2 ||z - mu||^2 at the weights the G+E phase saw (D already stepped)
    ld = d_loss_gan(D(x)[0], D(G(z1).detach())[0])
    for p, g in zip(D.parameters(), torch.autograd.grad(ld, list(D.parameters()))):
        p.data -= LR * g
    with torch.no_grad():
        mu, _ = E(D(G(z2))[1])
    assert "sigma_mean" not in stats
    torch.testing.assert_close(stats["loss_e"], (1 / 3) * 0.5 * (z2 - mu).pow(2).sum(dim=1).mean())
    assert same(snap(nets.E.logvar), logvar_head)  # no gradient ever reached the variance head
    assert not same(snap(nets.E.mu), snap(E.mu))  # while the mean head did train


def test_ali_phases_route_gradients_to_their_networks():
    _, nets, step = make(variant="ali")
    g0, d0, e0 = snap(nets.G), snap(nets.D), snap(nets.E)
    seen = {}
    d_step, ge_step = nets.opt_d.step, nets.opt_ge.step

    def on_d_step():
        seen["ge_grads"] = [p.grad for p in list(nets.G.parameters()) + list(nets.E.parameters())]
        d_step()

    def on_ge_step():
        seen["d_grads"] = [p.grad for p in nets.D.parameters()]
        seen["D_before"] = snap(nets.D)
        seen["E_grad"] = sum(p.grad.abs().sum().item() for p in nets.E.parameters())
        ge_step()

    nets.opt_d.step, nets.opt_ge.step = on_d_step, on_ge_step
    x, z1, z2 = batch()
    stats = step([x], [z1, z2])
    assert all(g is None for g in seen["ge_grads"]) and all(g is None for g in seen["d_grads"])
    assert same(seen["D_before"], snap(nets.D)) and seen["E_grad"] > 0
    assert not same(snap(nets.D), d0) and not same(snap(nets.G), g0) and not same(snap(nets.E), e0)
    assert stats["loss_d"] > 0


def test_wgan_gp_adds_the_penalty_to_the_critic_loss():
    x, z1, z2 = batch()
    losses = []
    for gp in (10.0, 0.0):
        _, _, step = make(adversarial="wgan-gp", gp_weight=gp)  # same seed: same networks
        torch.manual_seed(5)  # same interpolation weights
        losses.append(step([x], [z1, z2])["loss_d"])
    assert losses[0] > losses[1]  # the penalty is non-negative and, at initialisation, positive


def test_fused_real_fake_forward_equals_two_forwards():
    _, nets_a, step_a = make()
    _, nets_b, step_b = make()
    assert step_a.fuse_d  # the MLP discriminator has no BatchNorm
    step_b.fuse_d = False
    x, z1, z2 = batch()
    sa, sb = step_a([x], [z1, z2]), step_b([x], [z1, z2])
    assert {k: float(v) for k, v in sa.items()} == pytest.approx({k: float(v) for k, v in sb.items()}, rel=1e-5)
    for a, b in zip(nets_a.D.parameters(), nets_b.D.parameters()):
        torch.testing.assert_close(a, b)


def test_batchnorm_discriminator_is_never_fused():
    from dali_dist.config import load_config

    cfg = load_config("mnist", ["model.width=8", "model.latent_dim=4"], data="unused")
    G, D, E = build_models(cfg)
    nets = Networks(G, D, E, torch.optim.SGD(D.parameters(), lr=LR), torch.optim.SGD(G.parameters(), lr=LR))
    assert not DaliStep(nets, variant="dali", lambda_e=0.25, update_order="alternating").fuse_d


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_networks_train_like_eager_ones():
    """train.compile: the same two Algorithm 1 iterations with compiled G, D and E give the
    eager losses and weights to rounding (inductor reorders float sums, so not bit for bit)."""
    from dali_dist.config import load_config

    cfg = load_config("mnist", ["model.width=4", "model.latent_dim=4", "model.g_fc_width=16",
                                "model.d_head_width=16", "model.e_head_width=8"], data="x")

    def run(compiled: bool):
        torch.manual_seed(0)
        G, D, E = build_models(cfg)
        if compiled:
            for net in (G, D, E):
                net.compile()
        nets = Networks(G, D, E, torch.optim.Adam(D.parameters(), 1e-3),
                        torch.optim.Adam([*G.parameters(), *E.parameters()], 1e-3))
        step = DaliStep(nets, variant="dali", lambda_e=0.25, update_order="alternating")
        g = torch.Generator().manual_seed(3)
        out = []
        for _ in range(2):
            x = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
            out.append(step([x], [torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)]))
        return out, snap(G)

    (eager, g_eager), (comp, g_comp) = run(False), run(True)
    for a, b in zip(eager, comp):
        for k in a:
            assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-3, abs=1e-4), k
    for k in g_eager:
        assert torch.allclose(g_eager[k].float(), g_comp[k].float(), rtol=1e-3, atol=1e-4), k
