"""data_sources.py: what ``describe`` makes of a shard directory, a local pattern over it, and a
bare pattern (probed and counted), with the corrupt-data policy for missing or unreadable
shards. Bare shards are written here with Python's tarfile. (describe over a prepared MNIST
set and over ``pipe:`` patterns: test_data.py.)"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from dali_dist.data_sources import DatasetInfo, describe
from dali_dist.errors import UserError
from tests import _archives as A


def _pgm(w, h, c=1, v=7) -> tuple[str, bytes]:
    return ("ppm" if c == 3 else "pgm"), (b"P6" if c == 3 else b"P5") + b"\n%d %d\n255\n" % (w, h) + bytes([v]) * (w * h * c)


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


_tar = A.write_tar


def _images(path, n, w=4, h=4, c=1, ext_data=None):
    return _tar(path, [(f"s{i:03d}", {ext_data[0] if ext_data else _pgm(w, h, c)[0]:
                                      ext_data[1] if ext_data else _pgm(w, h, c)[1], "cls": b"1"}) for i in range(n)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared 2D-points set: train 900 points in shards of 300, test 200."""
    from data_prep.grid2d import Grid2DSource
    from data_prep.shards import build

    root = tmp_path_factory.mktemp("grid") / "g"
    build(Grid2DSource(num_train=900, num_test=200, block=100), root, shard_size=300, progress=False)
    return root


# ------------------------------------------------------------------------------------------ manifests


def test_a_shard_directory_is_its_manifest(prepared):
    m = json.loads((prepared / "manifest.json").read_text())
    for src in (prepared, prepared / "manifest.json", str(prepared)):
        info = describe(src)
        assert (info.dataset, info.kind, info.encoding, info.resolution, info.channels) == ("grid2d", "points", "npy",
                                                                                         None, None)
        assert info.shape == (2,) and info.num_classes == 25 and info.root == str(prepared)
        assert info.splits == {"train": 900, "test": 200}
        for split in ("train", "test"):
            shards = m["splits"][split]["shards"]
            assert info.shards[split] == [str(prepared / s["name"]) for s in shards]
            assert info.shard_counts[split] == [s["count"] for s in shards]
            assert info.shard_sha256[split] == [s["sha256"] for s in shards]
            assert info.shard_sizes[split] == [s["size"] for s in shards]
        assert info.manifest_sha256 == hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest()
        assert info.unreadable == []


def test_a_local_pattern_over_prepared_shards_borrows_the_manifest(prepared, capsys):
    info = describe(str(prepared / "{split}" / "shard-{000001..000002}.tar"), split="train")
    assert info.splits == {"train": 600} and info.shard_counts == {"train": [300, 300]}
    assert info.shards["train"] == [str(prepared / "train" / f"shard-00000{i}.tar") for i in (1, 2)]
    m = json.loads((prepared / "manifest.json").read_text())
    assert info.shard_sha256["train"] == [s["sha256"] for s in m["splits"]["train"]["shards"][1:]]
    assert info.dataset == "grid2d" and info.manifest_sha256 is not None
    assert "counting" not in capsys.readouterr().err  # no counting pass


def test_patterns_joined_with_double_colons(prepared):
    pat = str(prepared / "train" / "shard-000000.tar") + "::" + str(prepared / "test" / "shard-000000.tar")
    info = describe(pat, split="mixed")
    assert info.splits == {"mixed": 300 + 200} and info.shard_counts == {"mixed": [300, 200]}


# ------------------------------------------------------------------------------------------ bare patterns


def test_a_bare_pattern_is_probed_and_counted(tmp_path, capsys):
    _images(tmp_path / "d" / "a-0.tar", 3, w=5, h=5, c=3)
    _images(tmp_path / "d" / "a-1.tar", 4, w=5, h=5, c=3)
    info = describe(str(tmp_path / "d" / "a-{0..1}.tar"), split="valid")
    assert isinstance(info, DatasetInfo)
    assert (info.dataset, info.kind, info.encoding, info.resolution, info.channels) == ("unknown", "image", "raw", 5, 3)
    assert info.shape == (3, 5, 5) and info.splits == {"valid": 7} and info.shard_counts == {"valid": [3, 4]}
    assert info.manifest_sha256 is None and info.root is None
    assert "no manifest, counting samples in 2 shard(s)" in capsys.readouterr().err


def test_a_bare_pattern_of_png_or_points(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(buf, format="PNG")
    _images(tmp_path / "p.tar", 2, ext_data=("png", buf.getvalue()))
    info = describe(str(tmp_path / "p.tar"))
    assert (info.encoding, info.resolution, info.channels, info.splits) == ("png", 6, 1, {"train": 2})
    _tar(tmp_path / "xy.tar", [("00000000", {"xy.npy": _npy(np.zeros((5, 2), np.float32)),
                                             "cls.npy": _npy(np.zeros(5, np.int64))}),
                                ("00000005", {"xy.npy": _npy(np.ones((3, 2), np.float32))})])
    info = describe(str(tmp_path / "xy.tar"))
    assert (info.kind, info.encoding, info.shape, info.splits) == ("points", "npy", (2,), {"train": 8})


def test_non_square_images_are_refused(tmp_path):
    _images(tmp_path / "r.tar", 2, w=6, h=4)
    with pytest.raises(UserError, match=f"^{tmp_path / 'r.tar'}: images must be square, sample s000 is 6x4$"):
        describe(str(tmp_path / "r.tar"))


def test_missing_shards_under_each_policy(tmp_path):
    _images(tmp_path / "s-1.tar", 2)
    pat = str(tmp_path / "s-{0..2}.tar")
    with pytest.raises(UserError, match=f"^{tmp_path / 's-0.tar'}: no such shard$"):
        describe(pat)
    info = describe(pat, on_corrupt="skip")
    assert info.shards == {"train": [str(tmp_path / "s-1.tar")]} and info.splits == {"train": 2}
    assert info.unreadable == [(str(tmp_path / f"s-{i}.tar"), f"{tmp_path / f's-{i}.tar'}: no such shard") for i in (0, 2)]
    with pytest.raises(UserError, match=r"none of the shards exists"):
        describe(str(tmp_path / "t-{0..2}.tar"), on_corrupt="skip")


def test_unreadable_shards_under_each_policy(tmp_path):
    _tar(tmp_path / "u-0.tar", [])                                   # holds no samples
    _images(tmp_path / "u-1.tar", 3)
    (tmp_path / "u-2.tar").write_bytes(_images(tmp_path / "x.tar", 3).read_bytes()[:700])  # cut inside a member
    pat = str(tmp_path / "u-{0..2}.tar")
    with pytest.raises(UserError, match=f"^{tmp_path / 'u-0.tar'}: shard holds no samples$"):
        describe(pat)
    info = describe(pat, on_corrupt="skip")
    assert info.shards == {"train": [str(tmp_path / "u-1.tar")]} and info.splits == {"train": 3}
    assert [u for u, _ in info.unreadable] == [str(tmp_path / "u-0.tar"), str(tmp_path / "u-2.tar")]
    assert all(msg.startswith(u) for u, msg in info.unreadable)
    with pytest.raises(UserError, match="no shard of the pattern is readable"):
        describe(str(tmp_path / "u-0.tar"), on_corrupt="skip")
