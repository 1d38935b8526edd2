"""Table 2 metrics checked on constructed sample sets with known answers."""

import numpy as np
import pytest
import torch

from dali_dist.metrics.modes import mode_metrics
from dali_dist.mixture import grid_means, sample_grid


def test_exact_means_give_all_modes_and_full_quality():
    m = mode_metrics(grid_means().numpy())
    assert m["modes_captured"] == 25 and m["high_quality_pct"] == 100.0


def test_true_mixture_matches_chi_distribution():
    # |N(0, s^2 I_2)| <= 3s has probability 1 - exp(-9/2) = 98.89%: the "perfect sampler" limit.
    x, _ = sample_grid(200_000, torch.Generator().manual_seed(0))
    m = mode_metrics(x.numpy())
    assert m["modes_captured"] == 25
    assert m["high_quality_pct"] == pytest.approx(100 * (1 - np.exp(-4.5)), abs=0.1)


def test_boundary_and_far_samples():
    means = grid_means().numpy()
    pts = np.array([
        means[0] + [0.149, 0.0],     # inside 3 std of mode 0
        means[1] + [0.0, 0.151],     # just outside: not high quality
        [1.0, 1.0],                  # between four modes: not high quality
        means[24] + [0.1, 0.1],      # |.| = 0.141 inside
    ])
    m = mode_metrics(pts)
    assert m["modes_captured"] == 2
    assert m["high_quality_pct"] == pytest.approx(50.0)


def test_mode_collapse_counts_only_covered_components():
    means = grid_means().numpy()
    pts = np.repeat(means[[3, 7, 11]], 100, axis=0)
    m = mode_metrics(pts)
    assert m["modes_captured"] == 3 and m["samples_per_mode_min"] == 0


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"mode metrics need \(N, 2\) samples, got shape \(10, 3\)"):
        mode_metrics(np.zeros((10, 3)))
