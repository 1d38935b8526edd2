"""seeding.py: every draw is a pure function of (seed, purpose, counters): the same parts give
the same draws in any order and any process, another purpose or counter gives other draws,
and no draw touches or depends on the global generator."""

from __future__ import annotations

import pytest
import torch

from dali_dist.seeding import derive_seed, generator, latent, reseed_step_generators


@pytest.fixture(autouse=True)
def _global_rng_restored():
    """These tests seed the global generator; the next test finds it as it was."""
    with torch.random.fork_rng(devices=[]):
        yield


def test_seeds_are_stable_across_processes_and_versions():
    """Pinned values: a change here changes every run's draws (and the resume of old runs)."""
    assert derive_seed(0, "shards", 3) == 2681285925044878286
    assert derive_seed(1234, 0, 7, 0) == 1585179827031748358


def test_seeds_fit_torch_and_differ_by_purpose_counter_order_and_type():
    parts = [(1, "z", 0, 5), (1, "sample", 0, 5), (1, "z", 0, 6), (1, "z", 1, 5), (1, 0, "z", 5), (1, "z", "0", 5),
             (2, "z", 0, 5)]
    seeds = [derive_seed(*p) for p in parts]
    assert len(set(seeds)) == len(parts)
    assert all(0 <= s < 2 ** 63 for s in seeds)
    torch.Generator().manual_seed(max(seeds))  # accepted as a seed


def test_generators_from_the_same_parts_draw_the_same_numbers():
    a, b, c = generator("grid2d", 7, 0, 3), generator("grid2d", 7, 0, 3), generator("grid2d", 7, 0, 4)
    x, y, z = (torch.rand(100, generator=g) for g in (a, b, c))
    assert torch.equal(x, y) and not torch.equal(x, z)
    assert torch.equal(x, torch.rand(100, generator=torch.Generator().manual_seed(derive_seed("grid2d", 7, 0, 3))))


def test_latent_is_z_from_its_own_generator_and_standard_normal():
    z = latent(2, 3, 1234, 0, 7, 0)
    assert z.shape == (2, 3) and z.dtype == torch.float32
    expected = torch.tensor([[0.8749, -0.6584, 0.1966], [-1.2529, -0.9000, 1.2322]])
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-4)
    assert torch.equal(z, torch.randn(2, 3, generator=generator("z", 1234, 0, 7, 0)))  # purpose "z" first
    big = latent(20000, 4, "stats")
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02


def test_a_resumed_run_draws_what_the_uninterrupted_run_drew():
    """Counters, not generator state: step 5 drawn directly equals step 5 after steps 0..4."""
    seed, rank = 42, 1
    uninterrupted = [latent(8, 4, seed, rank, step, 0) for step in range(6)]
    torch.manual_seed(999)  # whatever else happened in between
    torch.rand(1000)
    assert torch.equal(latent(8, 4, seed, rank, 5, 0), uninterrupted[5])
    assert len({tuple(z.flatten().tolist()) for z in uninterrupted}) == 6  # every step its own z
    assert not torch.equal(latent(8, 4, seed, 0, 5, 0), uninterrupted[5])  # and every rank its own


def test_latent_neither_uses_nor_advances_the_global_generator():
    torch.manual_seed(0)
    a = latent(4, 2, "x")
    after_a = torch.rand(3)
    torch.manual_seed(1)
    b = latent(4, 2, "x")
    torch.manual_seed(0)
    assert torch.equal(a, b) and torch.equal(torch.rand(3), after_a)


def test_reseed_step_generators_sets_the_cpu_generator_to_the_seed():
    reseed_step_generators(derive_seed("step", 3, 0, 10), torch.device("cpu"))
    first = torch.rand(5)
    reseed_step_generators(derive_seed("step", 3, 0, 10), torch.device("cpu"))
    assert torch.equal(torch.rand(5), first)
    ref = torch.Generator().manual_seed(derive_seed("step", 3, 0, 10))
    reseed_step_generators(derive_seed("step", 3, 0, 10), torch.device("cpu"))
    assert torch.equal(torch.rand(5), torch.rand(5, generator=ref))
    reseed_step_generators(derive_seed("step", 3, 0, 11), torch.device("cpu"))
    assert not torch.equal(torch.rand(5), first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_latent_on_cuda_equals_latent_on_cpu():
    assert torch.equal(latent(16, 8, 1, 0, 3, 0, device="cuda").cpu(), latent(16, 8, 1, 0, 3, 0))
