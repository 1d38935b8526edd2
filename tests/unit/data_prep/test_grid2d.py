"""data_prep/grid2d.py: the 25 means in ``dali_dist.mixture``'s order, points drawn from PCG64
seeded by (seed, split) bit for bit as documented, the source's blocks, and the shards it
builds, read back with Python's tarfile."""

from __future__ import annotations

import numpy as np
import pytest

from dali_dist.errors import UserError
from data_prep.grid2d import STD, Grid2DSource, means, sample
from data_prep.shards import build

from tests import _archives as A

VALUES = [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_means_component_i_is_v_i_div_5_v_i_mod_5():
    m = means()
    assert m.shape == (25, 2)
    assert m.tolist() == [[VALUES[i // 5], VALUES[i % 5]] for i in range(25)]


def test_points_are_the_documented_pcg64_draws():
    for seed, split, sid in ((0, "train", 0), (7, "test", 1)):
        rng = np.random.Generator(np.random.PCG64([seed, sid]))
        comp = rng.integers(0, 25, 300)
        want = (np.array([[VALUES[c // 5], VALUES[c % 5]] for c in comp]) + 0.05 * rng.standard_normal((300, 2)))
        x, c = sample(300, seed, split)
        assert x.dtype == np.float32 and c.dtype == np.int64 and STD == 0.05
        np.testing.assert_array_equal(c, comp)
        np.testing.assert_array_equal(x, want.astype(np.float32))
    a, b = sample(50, 1, "train"), sample(50, 1, "test")
    assert not np.array_equal(a[0], b[0])  # the splits are drawn independently


def test_the_source_cuts_each_split_into_blocks():
    src = Grid2DSource(num_train=250, num_test=0, seed=2, block=100)
    assert src.splits() == {"train": [0, 100, 200]}  # no test split when it has no points
    assert [src.item_count("train", s) for s in (0, 100, 200)] == [100, 100, 50]
    key, (xy, cl), label = src.load("train", 200)
    x, c = sample(250, 2, "train")
    assert key == "00000200" and label == 0
    np.testing.assert_array_equal(xy, x[200:])
    np.testing.assert_array_equal(cl, c[200:])
    assert src.options() == {"block": 100}
    info = src.source_info()
    assert info["seed"] == 2 and info["num_train"] == 250 and info["path"] == "generated"
    assert Grid2DSource(num_train=250, num_test=0, seed=3).source_info()["sha256"] != info["sha256"]


@pytest.mark.parametrize("kwargs", [dict(num_train=0), dict(num_test=-1), dict(block=0)])
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(UserError, match=r"^--num-train and --block must be >= 1, --num-test >= 0$"):
        Grid2DSource(**kwargs)


def test_grid2d_mixture(tmp_path):
    m = build(Grid2DSource(num_train=5000, num_test=1000, seed=3, block=300), tmp_path / "g", shard_size=2000,
              progress=False)
    assert m["kind"] == "points" and m["encoding"] == "npy" and m["resolution"] is None
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 5000, "test": 1000}
    got = A.read_shards(tmp_path / "g")
    xy = np.concatenate([p[0] for _, p, _ in got["train"]])
    cl = np.concatenate([p[1] for _, p, _ in got["train"]])
    assert xy.dtype == np.float32 and xy.shape == (5000, 2) and cl.min() >= 0 and cl.max() <= 24
    d = xy - means()[cl]
    assert np.abs(d.std() - 0.05) < 0.005 and np.abs(d).max() < 0.05 * 6
    assert len(np.unique(cl)) == 25
    m2 = build(Grid2DSource(num_train=5000, num_test=1000, seed=3, block=300), tmp_path / "g2", shard_size=2000,
               progress=False)
    assert m2["splits"] == m["splits"]  # same seed: same bytes
    m3 = build(Grid2DSource(num_train=5000, num_test=1000, seed=4, block=300), tmp_path / "g3", shard_size=2000,
               progress=False)
    assert m3["splits"]["train"]["shards"][0]["sha256"] != m["splits"]["train"]["shards"][0]["sha256"]


def test_grid2d_means_match_the_mixture_module():
    torch = pytest.importorskip("torch")
    mixture = pytest.importorskip("dali_dist.mixture")
    np.testing.assert_array_equal(means().astype(np.float32), mixture.grid_means(torch.float32).numpy())


