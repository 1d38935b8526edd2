"""partition.py: how a split is divided. Ranks x workers cover every sample exactly once;
``read_range`` gives records [start, stop) of the shards' concatenation; the seeded shuffle
buffer is a reproducible permutation; ``usable_shards`` applies the corrupt-data policy;
``refill_pool`` holds the first valid samples. Shards are written here with Python's tarfile."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dali_dist.corrupt import Bad, CorruptLog
from dali_dist.data_sources import DatasetInfo
from dali_dist.errors import UserError
from tests import _archives as A
from dali_dist.partition import check_has_samples, read_range, refill_pool, region, shuffled, usable_shards


def _pgm(value: int, side: int = 2) -> bytes:
    return b"P5\n%d %d\n255\n" % (side, side) + bytes([value]) * (side * side)


def _tar(path, samples) -> tuple[str, int, None]:
    """samples: [(key, {ext: bytes})] -> (url, count, sha256=None) as read_range takes them."""
    return str(A.write_tar(path, samples)), len(samples), None


@pytest.fixture
def shards(tmp_path):
    """Four shards of 3, 0, 5 and 2 samples; sample i is a grey image of value i, label i % 7."""
    out, i = [], 0
    for s, n in enumerate((3, 0, 5, 2)):
        samples = [(f"k{i + j:03d}", {"pgm": _pgm(i + j), "cls": str((i + j) % 7).encode()}) for j in range(n)]
        out.append(_tar(tmp_path / f"shard-{s}.tar", samples))
        i += n
    return out


def _where(shards, i):
    """The shard url of global position i, computed from the counts."""
    pos = 0
    for url, count, _ in shards:
        if i < pos + count:
            return url
        pos += count
    raise IndexError(i)


# ------------------------------------------------------------------------------------------ region


@pytest.mark.parametrize("n", [0, 1, 7, 10, 99, 1000])
@pytest.mark.parametrize("world, workers", [(1, 1), (2, 3), (3, 2), (4, 4), (7, 1), (16, 3)])
def test_ranks_and_workers_cover_every_sample_exactly_once(n, world, workers):
    owner = {}
    for r in range(world):
        r0, r1 = region(n, world, r)
        assert 0 <= r0 <= r1 <= n
        assert abs((r1 - r0) - n / world) < 1  # shares differ by at most one sample
        for w in range(workers):
            lo, hi = region(r1 - r0, workers, w)
            for i in range(r0 + lo, r0 + hi):
                assert i not in owner, f"sample {i} owned by {owner[i]} and {(r, w)}"
                owner[i] = (r, w)
    assert sorted(owner) == list(range(n))


def test_regions_are_contiguous_and_in_rank_order():
    n, parts = 23, 5
    bounds = [region(n, parts, i) for i in range(parts)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert bounds == [(0, 4), (4, 9), (9, 13), (13, 18), (18, 23)]


# ------------------------------------------------------------------------------------------ shuffled


def test_shuffle_buffer_is_a_reproducible_permutation_that_depends_on_the_seed():
    items = list(range(500))
    a = list(shuffled(iter(items), 64, random.Random(1)))
    b = list(shuffled(iter(items), 64, random.Random(1)))
    c = list(shuffled(iter(items), 64, random.Random(2)))
    assert sorted(a) == items and sorted(c) == items
    assert a == b
    assert a != c and a != items


def test_shuffle_buffer_only_emits_what_it_has_read():
    # output i is yielded after reading input buffer + i, so it cannot come from further on
    buffer, items = 10, list(range(300))
    out = list(shuffled(iter(items), buffer, random.Random(0)))
    assert all(v <= i + buffer for i, v in enumerate(out))


def test_shuffle_buffer_draws_from_the_whole_buffer():
    # the first item out is one of the first `buffer` in, each of them for some seed
    firsts = {next(shuffled(iter(range(100)), 10, random.Random(seed))) for seed in range(200)}
    assert firsts == set(range(10))


@pytest.mark.parametrize("n", [0, 1, 5, 64])
def test_shuffle_buffer_larger_than_the_input(n):
    out = list(shuffled(iter(range(n)), 64, random.Random(3)))
    assert sorted(out) == list(range(n))


def test_a_buffer_of_one_keeps_the_order():
    assert list(shuffled(iter(range(20)), 1, random.Random(0))) == list(range(20))


# ------------------------------------------------------------------------------------------ read_range


def test_read_range_gives_each_position_from_its_shard(shards):
    n = sum(c for _, c, _ in shards)
    for start in range(n + 1):
        for stop in range(start, n + 1):
            got = list(read_range(shards, start, stop, "image"))
            assert [key for _, (key, _, _) in got] == [f"k{i:03d}" for i in range(start, stop)]
            assert [url for url, _ in got] == [_where(shards, i) for i in range(start, stop)]
            assert [lab for _, (_, _, lab) in got] == [i % 7 for i in range(start, stop)]
            assert [p for _, (_, p, _) in got] == [("pgm", _pgm(i)) for i in range(start, stop)]


def test_read_range_past_a_short_shard(tmp_path, shards):
    # the third shard claims 5 samples and holds 3
    url, _, _ = shards[2]
    short = _tar(tmp_path / "short.tar", [(f"k{3 + j:03d}", {"pgm": _pgm(3 + j), "cls": b"0"}) for j in range(3)])
    damaged = [*shards[:2], (short[0], 5, None), shards[3]]
    with pytest.raises(UserError, match=f"^{short[0]}: ends after 3 samples, 5 were counted"):
        list(read_range(damaged, 0, 10, "image"))
    got = list(read_range(damaged, 2, 10, "image", lenient=True))
    assert len(got) == 8  # positions never shift
    keys = [rec[0] for _, rec in got]
    assert keys[:4] == ["k002", "k003", "k004", "k005"] and keys[6:] == ["k008", "k009"]
    for url_, (key, payload, label) in got[4:6]:
        assert key is None and isinstance(payload, Bad) and label == -1 and url_ == short[0]
    assert [p.ident for _, (_, p, _) in got[4:6]] == ["#3", "#4"]


# ------------------------------------------------------------------------------------------ policies


def _info(tmp_path, urls, counts, shas=None, sizes=None, unreadable=()):
    return DatasetInfo(dataset="t", resolution=2, channels=1, splits={"train": sum(counts)}, encoding="raw",
                       shards={"train": urls}, manifest_sha256=None, kind="image", shard_counts={"train": counts},
                       root=str(tmp_path), shard_sha256={"train": shas} if shas else {},
                       shard_sizes={"train": sizes} if sizes else {}, unreadable=list(unreadable))


def test_usable_shards_checks_sizes_under_either_policy(tmp_path, shards):
    urls, counts = [u for u, _, _ in shards], [c for _, c, _ in shards]
    sizes = [(tmp_path / f"shard-{i}.tar").stat().st_size for i in range(4)]
    info = _info(tmp_path, urls, counts, sizes=sizes)
    assert usable_shards(info, "train", "error", CorruptLog()) == [(u, c, None) for u, c in zip(urls, counts)]

    (tmp_path / "shard-2.tar").write_bytes((tmp_path / "shard-2.tar").read_bytes()[:1000])
    with pytest.raises(UserError, match=f"^{urls[2]}: 1000 bytes, the manifest says {sizes[2]}"):
        usable_shards(info, "train", "error", CorruptLog())
    log = CorruptLog()
    got = usable_shards(info, "train", "skip", log)
    assert got == [(urls[i], counts[i], None) for i in (0, 1, 3)]
    assert log.count == counts[2]  # every sample of the left-out shard


def test_usable_shards_without_checksums_or_sizes_takes_every_shard(tmp_path):
    info = _info(tmp_path, [str(tmp_path / "absent.tar")], [4])
    assert usable_shards(info, "train", "error", CorruptLog()) == [(str(tmp_path / "absent.tar"), 4, None)]


def test_usable_shards_when_every_shard_is_bad(tmp_path):
    urls = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    info = _info(tmp_path, urls, [2, 3], sizes=[10, 10], unreadable=[("x.tar", "x.tar: cannot count")])
    log = CorruptLog()
    with pytest.raises(UserError, match=f"^split 'train': every shard is missing or corrupt \\(first: {urls[0]}\\)"):
        usable_shards(info, "train", "skip", log)
    assert log.count == 1 + 2 + 3  # the unreadable one counted as one


def test_an_empty_split_names_the_manifest(tmp_path):
    info = _info(tmp_path, [], [])
    with pytest.raises(UserError, match=f"^{tmp_path / 'manifest.json'}: split 'train' has no samples$"):
        check_has_samples(info, "train", "src")
    info.root = None
    with pytest.raises(UserError, match="^pat-{0..3}.tar: split 'train' has no samples$"):
        check_has_samples(info, "train", "pat-{0..3}.tar")
    check_has_samples(_info(tmp_path, ["a"], [1]), "train", "src")  # one sample is enough


# ------------------------------------------------------------------------------------------ refill_pool


def test_refill_pool_is_the_first_valid_samples(tmp_path):
    samples = [("k0", {"pgm": b"not an image", "cls": b"1"}), ("k1", {"cls": b"2"}),  # corrupt, no image
               ("k2", {"pgm": _pgm(20), "cls": b"3"}), ("k3", {"pgm": _pgm(30), "cls": b"4"}),
               ("k4", {"pgm": _pgm(40), "cls": b"5"}), ("k5", {"pgm": _pgm(50), "cls": b"6"})]
    sh = [_tar(tmp_path / "s.tar", samples)]
    pool = refill_pool(sh, 0, 6, "image", (1, 2, 2), 3, "src")
    assert [(k, y) for _, y, k in pool] == [("k2", 3), ("k3", 4), ("k4", 5)]
    for (x, _, _), v in zip(pool, (20, 30, 40)):
        assert x.shape == (1, 2, 2) and x.dtype == np.uint8 and (x == v).all()
    assert [k for _, _, k in refill_pool(sh, 3, 6, "image", (1, 2, 2), 10, "src")] == ["k3", "k4", "k5"]
    with pytest.raises(UserError, match="^src: no readable sample in this rank's part of the split"):
        refill_pool(sh, 0, 2, "image", (1, 2, 2), 3, "src")
