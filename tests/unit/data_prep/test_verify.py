"""data_prep/verify.py called directly: a clean directory passes in both modes with the right
totals; each kind of damage is one problem naming the shard, every shard is checked (not just
up to the first problem); ``--quick`` checks files only; the command prints each problem and
fails with one line. (Through `dali-dist prep verify`: test_bad_input.py.)"""

from __future__ import annotations

import json

import pytest

from dali_dist.errors import UserError
from data_prep.verify import _check_label, command, verify

from tests import _archives as A
from tests import _corrupt as C


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """30 train / 10 test MNIST-like images in raw shards of 10 (3 + 1 shards)."""
    return A.mnist_shards(tmp_path_factory.mktemp("verify"), 30, 10, shard_size=10, encoding="raw")


@pytest.fixture
def shards(clean, tmp_path):
    return C.copy(clean, tmp_path / "raw")


@pytest.mark.parametrize("quick", [False, True])
def test_a_clean_directory_passes(clean, quick):
    assert verify(clean, quick=quick, progress=False) == {"shards": 4, "samples": 40, "problems": []}


def test_points_pass(tmp_path):
    from data_prep.grid2d import Grid2DSource
    from data_prep.shards import build

    build(Grid2DSource(num_train=500, num_test=120, block=100), tmp_path / "g", shard_size=200, progress=False)
    assert verify(tmp_path / "g", progress=False) == {"shards": 3 + 1, "samples": 620, "problems": []}


def test_every_damaged_shard_is_reported(shards):
    s0, s1, s2 = (C.shard_path(shards, "train", i) for i in range(3))
    t0 = C.shard_path(shards, "test", 0)
    s0.unlink()
    size = s1.stat().st_size
    s1.write_bytes(s1.read_bytes()[:-512])
    C.flip_bytes(s2)
    r = verify(shards, progress=False)
    assert r["shards"] == 4 and r["samples"] == 10  # only the test shard counted
    assert r["problems"] == [f"{s0}: missing", f"{s1}: size {size - 512}, manifest says {size}",
                             f"{s2}: sha256 differs from the manifest"]
    assert t0.is_file()
    assert verify(shards, quick=True, progress=False)["problems"] == r["problems"]  # file checks: in both modes


def test_only_the_full_check_reads_the_samples(shards):
    C.set_count(shards, "train", 1, 11)  # the manifest now claims one sample too many
    quick = verify(shards, quick=True, progress=False)
    assert quick["problems"] == [] and quick["samples"] == 41  # quick trusts the counts
    full = verify(shards, progress=False)
    assert full["problems"] == [f"{C.shard_path(shards, 'train', 1)}: holds 10 samples, manifest says 11"]
    assert full["samples"] == 40


def test_a_sample_that_differs_from_the_manifest(shards):
    keys = C.keys_of(C.shard_path(shards, "test", 0))
    C.rewrite(shards, "test", 0, C.garbage_image({keys[3]}))
    r = verify(shards, progress=False)
    assert len(r["problems"]) == 1
    assert r["problems"][0].startswith(f"{C.shard_path(shards, 'test', 0)}: sample {keys[3]}: ")
    assert verify(shards, quick=True, progress=False)["problems"] == []  # sizes and checksums were updated


@pytest.mark.parametrize("label, classes, ok", [(-1, None, True), (0, None, False), (0, 10, True), (9, 10, True),
                                                (10, 10, False), (-1, 10, False)])
def test_labels_against_the_classes(label, classes, ok):
    if ok:
        _check_label("u", "k", label, classes)
    else:
        with pytest.raises(UserError, match=f"^u: sample k has label {label}, "):
            _check_label("u", "k", label, classes)


def test_the_command_lists_each_problem_then_fails_in_one_line(shards, capsys):
    command(shards, quick=False, quiet=True)
    assert capsys.readouterr().out == f"{shards}: 4 shards, 40 samples, all match the manifest\n"
    paths = [C.shard_path(shards, "train", i) for i in (0, 2)]
    for p in paths:
        p.unlink()
    with pytest.raises(UserError) as info:
        command(shards, quick=True, quiet=True)
    assert str(info.value) == f"2 of 4 shard(s) failed verification; first: {paths[0]}: missing"
    assert capsys.readouterr().err == "".join(f"problem: {p}: missing\n" for p in paths)


def test_a_directory_without_a_manifest(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / 'manifest.json'}: no manifest.json"):
        verify(tmp_path, progress=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="format is 'other'"):
        verify(tmp_path, progress=False)
