"""The paper's 2D benchmark distribution: 25 Gaussians on a grid (docs/design.md, 'Metric protocols')."""

from __future__ import annotations

import torch

GRID_VALUES = (-4.0, -2.0, 0.0, 2.0, 4.0)
GRID_STD = 0.05
NUM_COMPONENTS = len(GRID_VALUES) ** 2


def grid_means(dtype=torch.float32) -> torch.Tensor:
    """(25, 2) component means {-4,-2,0,2,4}^2, row-major in (x, y)."""
    v = torch.tensor(GRID_VALUES, dtype=dtype)
    return torch.cartesian_prod(v, v)


def sample_grid(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points from the equal-weight mixture and their component indices."""
    comp = torch.randint(0, NUM_COMPONENTS, (n,), generator=generator)
    x = grid_means()[comp] + GRID_STD * torch.randn(n, 2, generator=generator)
    return x, comp


class GridStream:
    """Endless fresh batches from the exact mixture (no files): batch k of a rank is a pure
    function of (seed, rank, k), so resuming at batch k reproduces the uninterrupted run."""

    # The shards that `dali-dist prep grid2d` writes hold 100,000 points; an "epoch" of the
    # on-the-fly stream has the same nominal size so epoch-based schedules agree.
    NOMINAL_SIZE = 100_000

    def __init__(self, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.batch_size = batch_size
        self.seed, self.rank = seed, rank
        self.batches_per_epoch = max(self.NOMINAL_SIZE // (batch_size * world_size), 1)

    def batches(self, start_batch: int = 0):
        from .seeding import generator

        k = start_batch
        while True:
            yield sample_grid(self.batch_size, generator("grid2d", self.seed, self.rank, k))
            k += 1
