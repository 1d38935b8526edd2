"""mixture.py: the 25 grid means, samples whose moments match the mixture (tolerances of five
standard errors for the sample size), and the endless stream whose batch k is a pure function
of (seed, rank, k)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dali_dist.mixture import GRID_STD, NUM_COMPONENTS, GridStream, grid_means, sample_grid

VALUES = [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_the_25_means_on_the_grid_row_major():
    m = grid_means()
    assert m.shape == (25, 2) and m.dtype == torch.float32 and NUM_COMPONENTS == 25
    assert m.tolist() == [[VALUES[i // 5], VALUES[i % 5]] for i in range(25)]
    assert grid_means(torch.float64).dtype == torch.float64
    assert GRID_STD == 0.05


def test_samples_match_the_mixture():
    n = 200_000
    x, comp = sample_grid(n, torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32 and comp.shape == (n,) and comp.dtype == torch.int64
    x, comp = x.double().numpy(), comp.numpy()
    assert comp.min() == 0 and comp.max() == 24

    # equal weights: each count within 5 binomial standard deviations of n / 25
    p = 1 / 25
    counts = np.bincount(comp, minlength=25)
    assert np.abs(counts - n * p).max() < 5 * math.sqrt(n * p * (1 - p))

    # each point is its component's mean plus N(0, 0.05^2 I)
    r = x - np.array([[VALUES[c // 5], VALUES[c % 5]] for c in range(25)])[comp]
    se_mean = GRID_STD / math.sqrt(n)
    assert np.abs(r.mean(axis=0)).max() < 5 * se_mean
    se_std = GRID_STD / math.sqrt(2 * (n - 1))
    assert np.abs(r.std(axis=0, ddof=1) - GRID_STD).max() < 5 * se_std
    assert abs(np.corrcoef(r.T)[0, 1]) < 5 / math.sqrt(n)  # the two coordinates independent

    # the mixture as a whole: mean 0, variance E[v^2] + s^2 per coordinate
    var = np.mean(np.square(VALUES)) + GRID_STD ** 2
    assert np.abs(x.mean(axis=0)).max() < 5 * math.sqrt(var / n)
    mu4 = np.mean(np.power(VALUES, 4)) + 6 * np.mean(np.square(VALUES)) * GRID_STD ** 2 + 3 * GRID_STD ** 4
    assert np.abs(x.var(axis=0) - var).max() < 5 * math.sqrt((mu4 - var ** 2) / n)  # SE of a sample variance


def test_samples_depend_only_on_the_generator():
    a = sample_grid(100, torch.Generator().manual_seed(5))
    b = sample_grid(100, torch.Generator().manual_seed(5))
    c = sample_grid(100, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def _take(stream, n, start=0):
    return list(itertools.islice(stream.batches(start), n))


def test_stream_batches_are_pure_functions_of_seed_rank_and_index():
    s = GridStream(batch_size=32, seed=3, rank=1, world_size=2)
    first = _take(s, 6)
    assert all(x.shape == (32, 2) and y.shape == (32,) for x, y in first)
    again = _take(GridStream(batch_size=32, seed=3, rank=1, world_size=2), 6)
    resumed = _take(GridStream(batch_size=32, seed=3, rank=1, world_size=2), 2, start=4)
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(first[4:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(first[0][0], first[1][0])  # fresh points every batch
    other_rank = _take(GridStream(batch_size=32, seed=3, rank=0, world_size=2), 1)[0][0]
    other_seed = _take(GridStream(batch_size=32, seed=4, rank=1, world_size=2), 1)[0][0]
    assert not torch.equal(first[0][0], other_rank) and not torch.equal(first[0][0], other_seed)


@pytest.mark.parametrize("batch, world, expected", [(100, 1, 1000), (64, 2, 781), (512, 8, 24),
                                                    (100_000, 1, 1), (70_000, 4, 1)])
def test_nominal_epoch(batch, world, expected):
    assert GridStream(batch_size=batch, seed=0, world_size=world).batches_per_epoch == expected
