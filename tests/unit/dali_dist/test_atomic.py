"""atomic.py: a file is written whole or not at all; a failure mid-write leaves the old file
byte for byte and no temporary; the new file arrives by a rename, fsynced unless told not to."""

from __future__ import annotations

import json
import os

import pytest

from dali_dist import atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_temporary_name_is_hidden_beside_the_target_and_keeps_the_suffix(tmp_path):
    t = atomic.temporary_name(tmp_path / "codes.npz")
    assert t.parent == tmp_path
    assert t.name == f".codes.npz.tmp.{os.getpid()}.npz"


def test_writers_give_exactly_the_content_and_leave_only_the_target(tmp_path):
    atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01payload")
    atomic.write_text(tmp_path / "b.txt", "héllo\n")
    atomic.write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01payload"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    assert (tmp_path / "c.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2], "b": 1}
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json"]


@pytest.mark.parametrize("exc", [RuntimeError("disk gone"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, exc):
    target = tmp_path / "state.json"
    target.write_text('{"step": 1}')
    with pytest.raises(type(exc)):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text('{"st')  # half of the new content
            assert tmp.exists() and target.read_text() == '{"step": 1}'  # the target is untouched meanwhile
            raise exc
    assert target.read_text() == '{"step": 1}'
    assert _names(tmp_path) == ["state.json"]


def test_a_failure_before_anything_was_written_is_clean_too(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_path(tmp_path / "new.json"):
            raise ValueError("refused before writing")
    assert _names(tmp_path) == []


def test_the_new_file_arrives_by_rename_not_by_copy(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        inode = os.stat(tmp).st_ino
    assert os.stat(target).st_ino == inode and target.read_bytes() == b"new"


@pytest.mark.parametrize("durable", [True, False])
def test_durable_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch, durable):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "out.txt"
    with atomic.atomic_path(target, durable=durable) as tmp:
        tmp.write_text("x")
        tmp_name = str(tmp.resolve())
    expected = [tmp_name, str(tmp_path.resolve())] if durable else []
    assert synced == expected
    assert target.read_text() == "x"


def test_fsync_dir_of_a_missing_folder_is_quiet(tmp_path):
    assert atomic.fsync_dir(tmp_path / "missing") is None  # the rename it follows stands either way
    assert _names(tmp_path) == []  # and nothing is created
