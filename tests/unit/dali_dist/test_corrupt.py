"""The loader's corrupt-data policy (``on_corrupt``): "error" is one line naming the file and
the problem; "skip" leaves bad shards and samples out, warns once per file, counts them, and
still gives every rank exactly ``batches_per_epoch`` full batches, resumable exactly."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from dali_dist.data import TrainStream, eval_batches
from dali_dist.errors import UserError
from data_prep.grid2d import Grid2DSource
from data_prep.shards import build

from tests import _archives as A
from tests import _corrupt as C


pytestmark = [pytest.mark.timeout(90), pytest.mark.filterwarnings("ignore:This DataLoader will create")]
B = 10


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """230 train / 103 test MNIST-like images in PNG shards of 20."""
    return A.mnist_shards(tmp_path_factory.mktemp("corrupt"), 230, 103, shard_size=20, encoding="png")


@pytest.fixture
def data(clean, tmp_path):
    return C.copy(clean, tmp_path / "png")


def take(stream, n, start=0):
    return list(itertools.islice(stream.batches(start), n))


def raises_one_line(fn, *needles) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for s in needles:
        assert s in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ "error"


def test_error_missing_shard_before_any_batch(data):
    p = C.shard_path(data, "train", 3)
    p.unlink()
    raises_one_line(lambda: TrainStream(data, batch_size=B, seed=0), str(p), "missing shard")
    q = C.shard_path(data, "test", 1)
    q.unlink()
    raises_one_line(lambda: next(eval_batches(data, batch_size=B)), str(q), "missing shard")


@pytest.mark.parametrize("workers", [0, 2])
def test_error_same_size_corruption_is_caught_by_sha256(data, workers):
    for i in range(12):
        C.flip_bytes(C.shard_path(data, "train", i))
    s = TrainStream(data, batch_size=B, seed=0, num_workers=workers)  # sizes still match
    raises_one_line(lambda: take(s, 3), "train/shard-0000", "sha256 differs from the manifest")


def test_error_manifest_count_differs_from_shard(data):
    C.set_count(data, "test", 0, 19)
    raises_one_line(lambda: list(eval_batches(data, batch_size=B)), "test/shard-000000.tar",
                    "holds 20 samples, the manifest says 19")


@pytest.mark.parametrize("workers", [0, 2])
def test_error_undecodable_sample(data, workers):
    path = C.shard_path(data, "train", 4)
    key = C.keys_of(path)[7]
    C.rewrite(data, "train", 4, C.garbage_image({key}))
    s = TrainStream(data, batch_size=B, seed=0, num_workers=workers)
    raises_one_line(lambda: take(s, s.batches_per_epoch), str(path), f"sample {key}", "cannot decode png")


def test_error_bad_label(data):
    path = C.shard_path(data, "test", 2)
    key = C.keys_of(path)[0]
    C.rewrite(data, "test", 2, lambda n, d: b"seven" if n == f"{key}.cls" else d)
    raises_one_line(lambda: list(eval_batches(data, batch_size=B)), str(path), "label b'seven' is not an integer")


def test_error_truncated_shard_in_a_bare_pattern(data, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(data / "train", bare)  # no manifest: the loader counts samples first
    p = bare / "shard-000005.tar"
    p.write_bytes(p.read_bytes()[:3000])
    raises_one_line(lambda: TrainStream(str(bare / "shard-{000000..000011}.tar"), batch_size=B, seed=0),
                    str(p), "truncated")


def test_error_shard_that_ends_early_at_a_member_boundary(data):
    """A cut at a member boundary reads as a clean end of archive; the manifest's count (here
    without size and sha256, as an older manifest might be) shows the shard is short."""
    import json
    import tarfile

    p = C.shard_path(data, "test", 0)
    with tarfile.open(p) as tf:
        cut = tf.getmembers()[10].offset  # after 5 samples of 2 members each
    p.write_bytes(p.read_bytes()[:cut])
    m = C.manifest(data)
    for k in ("size", "sha256"):
        del m["splits"]["test"]["shards"][0][k]
    (data / "manifest.json").write_text(json.dumps(m))
    raises_one_line(lambda: list(eval_batches(data, batch_size=B)), str(p), "ends after 5 samples, 20 were counted")


@pytest.mark.parametrize("field", list(C.HUGE_SIZES))
@pytest.mark.parametrize("with_sha", [True, False])
def test_error_member_claiming_a_huge_size(data, field, with_sha):
    """A member header claiming more bytes than the file holds reads as a truncated or corrupt
    shard, whether the sha256 pass or the reader meets it first; nothing that size is allocated."""
    import json

    C.claim_size(data, "test", 0, 2, C.HUGE_SIZES[field])
    if not with_sha:
        m = C.manifest(data)
        del m["splits"]["test"]["shards"][0]["sha256"]
        (data / "manifest.json").write_text(json.dumps(m))
    raises_one_line(lambda: list(eval_batches(data, batch_size=B)), str(C.shard_path(data, "test", 0)),
                    "truncated or corrupt tar")


# ------------------------------------------------------------------------------------------ "skip"


def damage(data) -> set:
    """Four kinds of damage in the train split; returns the keys that must never be yielded."""
    gone = set(C.keys_of(C.shard_path(data, "train", 0)))
    C.shard_path(data, "train", 0).unlink()                                  # missing
    gone |= set(C.keys_of(C.shard_path(data, "train", 1)))
    C.flip_bytes(C.shard_path(data, "train", 1))                             # sha256 differs
    bad = C.keys_of(C.shard_path(data, "train", 2))[:3]
    C.rewrite(data, "train", 2, C.garbage_image(set(bad)))                   # undecodable samples
    label = C.keys_of(C.shard_path(data, "train", 3))[5]
    C.rewrite(data, "train", 3, lambda n, d: b"x" if n == f"{label}.cls" else d)  # bad label
    return gone | set(bad) | {label}


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_keeps_every_rank_at_batches_per_epoch(data, workers, capsys):
    gone = damage(data)
    world = 2
    streams = [TrainStream(data, batch_size=B, seed=3, rank=r, world_size=world, num_workers=workers,
                           with_keys=True, on_corrupt="skip") for r in range(world)]
    bpe = 230 // (B * world)  # from the manifest's count: the same on every rank whatever it finds
    assert [s.batches_per_epoch for s in streams] == [bpe, bpe]
    met = 0
    for s in streams:
        got = take(s, 2 * bpe)
        assert len(got) == 2 * bpe
        for x, y, keys in got:
            assert x.shape == (B, 1, 28, 28) and y.shape == (B,) and len(keys) == B
            assert not gone & set(keys)
            assert x.min() >= -1 and x.max() <= 1
        assert s.corrupt_skipped >= 40  # the two shards left out at the start, 20 samples each
        met += s.corrupt_skipped - 40
    assert met >= 4  # each of the 4 bad samples was met by some rank
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    files = [w.split(":", 2)[1].strip() for w in warnings]
    assert 4 <= len(warnings) <= 4 * world and len(set(files)) == 4  # one line per bad file and rank
    assert any("missing shard" in w for w in warnings) and any("sha256 differs" in w for w in warnings)
    assert any("cannot decode png" in w for w in warnings) and any("not an integer" in w for w in warnings)


@pytest.mark.parametrize("workers", [0, 3])
def test_skip_resumes_exactly(data, workers):
    bad = []
    for i in (2, 5, 7):
        bad += C.rewrite(data, "train", i, C.garbage_image(set(C.keys_of(C.shard_path(data, "train", i))[::4])))
    s = TrainStream(data, batch_size=8, seed=5, rank=1, world_size=2, num_workers=workers, with_keys=True,
                    on_corrupt="skip")
    bpe = s.batches_per_epoch
    full = take(s, 2 * bpe + 3)
    assert s.corrupt_skipped > 0
    assert not set(bad) & {k for *_, ks in full for k in ks}
    for k in (1, 5, bpe, bpe + 2, 2 * bpe):
        for (xa, ya, ka), (xb, yb, kb) in zip(full[k:k + 3], take(s, 3, start=k)):
            assert ka == kb and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_skip_changes_nothing_on_clean_data(clean):
    a = take(TrainStream(clean, batch_size=B, seed=1, num_workers=2, with_keys=True), 30)
    b = take(TrainStream(clean, batch_size=B, seed=1, num_workers=2, with_keys=True, on_corrupt="skip"), 30)
    assert [k for *_, k in a] == [k for *_, k in b]


def test_skip_shard_damaged_after_the_start(data):
    """Damage found while reading (not by the start-up check): the shard's positions are
    refilled from valid samples, full batches keep coming."""
    s = TrainStream(data, batch_size=B, seed=0, with_keys=True, on_corrupt="skip")
    assert s.corrupt_skipped == 0
    victim = C.shard_path(data, "train", 6)
    keys = set(C.keys_of(victim))
    C.flip_bytes(victim)
    got = take(s, s.batches_per_epoch)
    assert all(len(k) == B for *_, k in got) and not keys & {k for *_, ks in got for k in ks}
    assert s.corrupt_skipped == 20  # every position of the shard, counted once


def test_skip_eval_covers_every_valid_sample_once(data, capsys):
    C.shard_path(data, "test", 5).unlink()  # the last, short shard: samples 100..102
    path = C.shard_path(data, "test", 1)
    bad = C.keys_of(path)[::3]
    C.rewrite(data, "test", 1, C.garbage_image(set(bad)))
    keys = [k for r in range(2) for *_, ks in eval_batches(data, batch_size=7, rank=r, world_size=2, num_workers=2,
                                                           on_corrupt="skip") for k in ks]
    assert sorted(keys) == sorted(set(f"{i:05d}" for i in range(100)) - set(bad))
    err = capsys.readouterr().err
    assert "skipped" in err and str(path) in err


def test_skip_with_everything_corrupt_is_an_error(data):
    for i in range(12):
        C.flip_bytes(C.shard_path(data, "train", i))
    raises_one_line(lambda: TrainStream(data, batch_size=B, seed=0, on_corrupt="skip"), "every shard")


def test_skip_truncated_shard_in_a_bare_pattern(data, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(data / "train", bare)
    p = bare / "shard-000005.tar"
    p.write_bytes(p.read_bytes()[:3000])
    s = TrainStream(str(bare / "shard-{000000..000011}.tar"), batch_size=B, seed=0, on_corrupt="skip")
    assert s.batches_per_epoch == 210 // B and s.corrupt_skipped == 1  # its count is unknown: 1
    assert len(take(s, s.batches_per_epoch + 1)) == s.batches_per_epoch + 1


def test_skip_points(tmp_path):
    root = tmp_path / "g"
    build(Grid2DSource(num_train=2000, num_test=700, block=150), root, shard_size=450, progress=False)
    C.rewrite(root, "train", 1, lambda n, d: d[:40] if n.endswith("xy.npy") else d)
    with pytest.raises(UserError, match="bad npy"):
        take(TrainStream(root, batch_size=64, seed=0), 2000 // 64)
    s = TrainStream(root, batch_size=64, seed=0, num_workers=2, on_corrupt="skip")
    got = take(s, s.batches_per_epoch)
    assert all(x.shape == (64, 2) and torch.isfinite(x).all() for x, _ in got)
    assert s.corrupt_skipped == 450  # the damaged shard (3 samples of 150 points) left out at the start


def test_policy_is_checked():
    with pytest.raises(UserError, match="on_corrupt must be one of error, skip"):
        TrainStream("/nonexistent", batch_size=1, seed=0, on_corrupt="ignore")
