"""Table 2 mode metrics on the 25-Gaussian grid (Srivastava et al. 2017 protocol).

A sample is *high quality* if it lies within 3 standard deviations (0.15) of its nearest
component mean; *modes captured* counts components whose mean is the nearest mean of at
least one high-quality sample.
"""

from __future__ import annotations

import numpy as np

from ..mixture import GRID_STD, grid_means

HQ_RADIUS = 3.0 * GRID_STD


def mode_metrics(samples: np.ndarray) -> dict:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"mode metrics need (N, 2) samples, got shape {x.shape}")
    means = grid_means().double().numpy()
    dist = np.linalg.norm(x[:, None, :] - means[None, :, :], axis=2)  # (N, 25)
    nearest = dist.argmin(axis=1)
    high_quality = dist[np.arange(len(x)), nearest] <= HQ_RADIUS
    captured = np.unique(nearest[high_quality])
    counts = np.bincount(nearest[high_quality], minlength=len(means))
    return {
        "modes_captured": int(len(captured)),
        "high_quality_pct": float(100.0 * high_quality.mean()) if len(x) else 0.0,
        "num_samples": int(len(x)),
        "samples_per_mode_min": int(counts.min()),
        "samples_per_mode_max": int(counts.max()),
    }
