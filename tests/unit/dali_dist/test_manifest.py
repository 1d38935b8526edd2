"""manifest.py: a valid manifest round-trips through write_json_atomic and read_manifest; every
malformed field is refused with one line naming the file and the field; the checksums agree
with hashlib."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from dali_dist.errors import UserError
from dali_dist.manifest import (MANIFEST_NAME, MAX_CLASSES, MAX_RESOLUTION, check_manifest, manifest_path,
                                read_manifest, sha256_file, sha256_json, write_json_atomic)

SHA = "0123456789abcdef" * 4


def _valid() -> dict:
    return {
        "format": "dali-dist-shards", "format_version": 1, "dataset": "mnist", "kind": "image",
        "resolution": 28, "channels": 1, "encoding": "png", "num_classes": 10,
        "splits": {
            "train": {"count": 7, "shards": [{"name": "train/shard-000000.tar", "count": 5, "sha256": SHA, "size": 10240},
                                             {"name": "train/shard-000001.tar", "count": 2}]},
            "test": {"count": 0, "shards": []},
        },
        "source": {"path": "x", "sha256": SHA}, "tool_version": "0", "skipped": {"count": 0, "keys": []},
    }


def _points() -> dict:
    m = _valid()
    m.update(kind="points", encoding="npy", resolution=None, channels=None, num_classes=25)
    return m


def test_round_trip(tmp_path):
    m = _valid()
    write_json_atomic(tmp_path / MANIFEST_NAME, m)
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temporary left
    raw = (tmp_path / MANIFEST_NAME).read_bytes()
    for where in (tmp_path, tmp_path / MANIFEST_NAME, str(tmp_path)):
        got = read_manifest(where)
        assert got.pop("_sha256") == hashlib.sha256(raw).hexdigest()
        assert got == m
    check_manifest(_points(), "p")  # the points layout is valid too


def test_manifest_path():
    assert manifest_path("d") == manifest_path("d/manifest.json")
    assert str(manifest_path("d")).endswith("d/manifest.json")


def test_checksums_match_hashlib(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", bufsize=1000) == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    a = {"b": 1, "a": [1, {"y": 2, "x": 3}]}
    b = {"a": [1, {"x": 3, "y": 2}], "b": 1}
    assert sha256_json(a) == sha256_json(b) == hashlib.sha256(b'{"a":[1,{"x":3,"y":2}],"b":1}').hexdigest()
    assert sha256_json(a) != sha256_json({**a, "b": 2})


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / MANIFEST_NAME}: no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"format": ')
    with pytest.raises(UserError, match=f"^{tmp_path / MANIFEST_NAME}: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)  # deeper than the parser goes
    with pytest.raises(UserError, match=f"^{tmp_path / MANIFEST_NAME}: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    (tmp_path / MANIFEST_NAME).mkdir()
    with pytest.raises(UserError, match=f"^{tmp_path / MANIFEST_NAME}: cannot read"):
        read_manifest(tmp_path)


def _set(path, value):
    def edit(m):
        *parents, last = path
        for p in parents:
            m = m[p]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return edit


TRAIN0 = ("splits", "train", "shards", 0)

REFUSALS = [
    (lambda m: m.clear() or m.update(x=[1]), "format is None, expected 'dali-dist-shards'"),
    (_set(("format",), "webdataset"), "format is 'webdataset', expected 'dali-dist-shards'"),
    (_set(("format_version",), 2), "format_version 2 is not supported (this tool reads 1)"),
    (_set(("format_version",), "1"), "format_version '1' is not supported"),
    (_set(("dataset",), KeyError), "missing field 'dataset'"),
    (_set(("splits",), KeyError), "missing field 'splits'"),
    (_set(("dataset",), 3), "dataset 3 is not a name"),
    (_set(("kind",), "video"), "kind 'video' is not one of ('image', 'points')"),
    (_set(("encoding",), "jpeg"), "encoding 'jpeg' does not fit kind 'image'"),
    (_set(("encoding",), "npy"), "encoding 'npy' does not fit kind 'image'"),
    (_set(("resolution",), 0), f"resolution 0 is not an integer in [1, {MAX_RESOLUTION}]"),
    (_set(("resolution",), MAX_RESOLUTION + 1), f"resolution {MAX_RESOLUTION + 1} is not an integer"),
    (_set(("resolution",), 28.0), "resolution 28.0 is not an integer"),
    (_set(("resolution",), True), "resolution True is not an integer"),
    (_set(("channels",), 2), "channels 2 is not 1 or 3"),
    (_set(("channels",), None), "channels None is not 1 or 3"),
    (_set(("num_classes",), 0), f"num_classes 0 is not null or an integer in [1, {MAX_CLASSES}]"),
    (_set(("num_classes",), MAX_CLASSES + 1), "is not null or an integer"),
    (_set(("num_classes",), True), "num_classes True is not null"),
    (_set(("splits",), {}), "splits is empty"),
    (_set(("splits",), []), "splits is empty"),
    (_set(("splits", "tr ain"), {"count": 0, "shards": []}), "split name 'tr ain' is not a plain name"),
    (_set(("splits", "../x"), {"count": 0, "shards": []}), "split name '../x' is not a plain name"),
    (_set(("splits", "train", "count"), -1), "split 'train' needs 'count' (an integer >= 0) and 'shards' (a list)"),
    (_set(("splits", "train", "shards"), {}), "split 'train' needs 'count'"),
    (_set(("splits", "train"), []), "split 'train' needs 'count'"),
    (_set(TRAIN0, "train/shard-000000.tar"), "split 'train': shard entries need 'name' and 'count'"),
    (_set((*TRAIN0, "name"), 5), "split 'train': shard entries need 'name' and 'count'"),
    (_set((*TRAIN0, "count"), "5"), "split 'train': shard 'train/shard-000000.tar' has count '5', not an integer >= 0"),
    (_set((*TRAIN0, "count"), KeyError), "has count None, not an integer >= 0"),
    (_set((*TRAIN0, "name"), "../train/shard-000000.tar"), "shard name '../train/shard-000000.tar' is not "
                                                          "'train/shard-NNNNNN.tar'"),
    (_set((*TRAIN0, "name"), "/etc/shard-000000.tar"), "is not 'train/shard-NNNNNN.tar'"),
    (_set((*TRAIN0, "name"), "test/shard-000000.tar"), "shard name 'test/shard-000000.tar' is not"),
    (_set((*TRAIN0, "name"), "train/shard-0.tar"), "shard name 'train/shard-0.tar' is not"),
    (_set((*TRAIN0, "name"), "train/shard-000001.tar"), "shard 'train/shard-000001.tar' is listed twice"),
    (_set((*TRAIN0, "size"), -3), "shard 'train/shard-000000.tar': size -3 is not an integer >= 0"),
    (_set((*TRAIN0, "sha256"), SHA.upper()), "sha256 '0123456789ABCDEF"),
    (_set((*TRAIN0, "sha256"), SHA[:-1]), "is not 64 hex digits"),
    (_set(("splits", "train", "count"), 8), "split 'train': shard counts add up to 7, not 8"),
]


@pytest.mark.parametrize("edit, msg", REFUSALS)
def test_each_malformed_field_is_refused_naming_the_file(tmp_path, edit, msg):
    m = _valid()
    edit(m)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(UserError) as info:
        read_manifest(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / MANIFEST_NAME}: ") and msg in text, text


@pytest.mark.parametrize("edit, msg", [
    (_set(("encoding",), "png"), "encoding 'png' does not fit kind 'points'"),
    (_set(("kind",), "image"), "encoding 'npy' does not fit kind 'image'"),
])
def test_points_need_npy(edit, msg):
    m = _points()
    edit(m)
    with pytest.raises(UserError, match=f"^where: {msg}"):
        check_manifest(m, "where")


def test_a_hostile_value_is_shortened_in_the_message():
    m = _valid()
    m["dataset"] = ["x" * 10_000]
    with pytest.raises(UserError) as info:
        check_manifest(m, "w")
    assert str(info.value) == f"w: dataset {repr(m['dataset'])[:57]}... is not a name"


def test_not_an_object():
    for value in ([], "x", 3, None):
        with pytest.raises(UserError, match="^w: manifest is not a JSON object$"):
            check_manifest(value, "w")


def test_the_valid_manifest_is_not_changed_by_checking():
    m = _valid()
    before = copy.deepcopy(m)
    check_manifest(m, "w")
    assert m == before
