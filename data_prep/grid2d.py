"""The paper's 2D benchmark: a 25-Gaussian mixture on a grid (docs/design.md, 'Metric protocols') -> shards.

    python -m data_prep.grid2d --out data/grid2d
    dali-dist prep grid2d --out data/grid2d [--num-train 100000] [--num-test 10000] [--seed 0]

Means ``{-4,-2,0,2,4}^2`` (component ``i`` has mean ``(v[i // 5], v[i % 5])``, the order of
``dali_dist.mixture.grid_means``), standard deviation 0.05, equal weights. Each split is
drawn from numpy's PCG64 seeded by ``(seed, split)``: the same seed gives the same points,
bit for bit. Points are stored in blocks (one WebDataset sample per ``--block`` points:
``KEY.xy.npy`` float32 (n, 2) and ``KEY.cls.npy`` int64 component indices), so 100,000 points
take ~1 MB instead of one 1 KB tar member each; the loader unpacks them into single points
whose keys are their index in the split. ``--source`` is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from dali_dist.errors import UserError
from dali_dist.manifest import sha256_json

from .shards import Source, build

from dali_dist.mixture import GRID_STD as STD, GRID_VALUES

SPLIT_IDS = {"train": 0, "test": 1}


def means() -> np.ndarray:
    v = np.array(GRID_VALUES)
    return np.stack(np.meshgrid(v, v, indexing="ij"), -1).reshape(-1, 2)


def sample(n: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64([seed, SPLIT_IDS[split]]))
    comp = rng.integers(0, len(GRID_VALUES) ** 2, n)
    x = means()[comp] + STD * rng.standard_normal((n, 2))
    return x.astype(np.float32), comp.astype(np.int64)


class Grid2DSource(Source):
    dataset = "grid2d"
    kind = "points"
    num_classes = 25
    shuffle_train = False  # already i.i.d.

    def __init__(self, num_train: int = 100_000, num_test: int = 10_000, seed: int = 0, block: int = 1000):
        if num_train < 1 or num_test < 0 or block < 1:
            raise UserError("--num-train and --block must be >= 1, --num-test >= 0")
        self.n = {"train": num_train, "test": num_test}
        self.seed, self.block = seed, block
        self.data = {s: sample(n, seed, s) for s, n in self.n.items() if n}

    def source_info(self) -> dict:
        spec = {"generator": "numpy PCG64([seed, split])", "means": "{-4,-2,0,2,4}^2", "std": STD, "seed": self.seed,
                "num_train": self.n["train"], "num_test": self.n["test"]}
        return {"path": "generated", **spec, "sha256": sha256_json(spec)}

    def options(self) -> dict:
        return {"block": self.block}

    def splits(self) -> dict:
        return {s: list(range(0, n, self.block)) for s, n in self.n.items() if n}

    def item_count(self, split, start) -> int:
        return min(self.block, self.n[split] - start)

    def load(self, split, start):
        x, c = self.data[split]
        end = start + self.item_count(split, start)
        return f"{start:08d}", (x[start:end], c[start:end]), 0


def command(
    out: Path = typer.Option(..., "--out", help="Output shard directory."),
    num_train: int = typer.Option(100_000, "--num-train", help="Points in the train split."),
    num_test: int = typer.Option(10_000, "--num-test", help="Points in the test split."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    block: int = typer.Option(1000, "--block", help="Points per WebDataset sample."),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Points per shard."),
    source: Path = typer.Option(None, "--source", help="Ignored (the data is generated); accepted for symmetry."),
    workers: int = typer.Option(1, "--workers", help="Processes writing shards."),
    force: bool = typer.Option(False, "--force", help="Rebuild every shard."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """The 25-Gaussian 2D grid (100,000 train points) -> WebDataset shards."""
    src = Grid2DSource(num_train, num_test, seed, block)
    build(src, out, shard_size=shard_size, workers=workers, force=force, progress=not quiet)


def main() -> None:
    from dali_dist.cli_util import run_single

    run_single(command)


if __name__ == "__main__":
    main()
