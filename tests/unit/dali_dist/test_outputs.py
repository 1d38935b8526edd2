"""Commands write their own output and nothing else: the mark in each format, the checks made
before any work, atomic writes that leave no temporary behind (the rule through the CLI:
tests/integration/test_outputs_cli.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dali_dist import atomic
from dali_dist.errors import UserError
from dali_dist.outputs import check_file, check_folder, is_ours, save_npz, save_png, write_json


def test_each_format_carries_the_mark_and_foreign_files_do_not(tmp_path):
    save_npz(tmp_path / "a.npz", "encode", codes=np.zeros((2, 3)))
    save_png(tmp_path / "a.png", Image.new("L", (4, 4)), "sample")
    write_json(tmp_path / "a.json", {"step": 3}, "evaluate")
    assert all(is_ours(tmp_path / f"a.{ext}") for ext in ("npz", "png", "json"))
    assert json.loads((tmp_path / "a.json").read_text())["step"] == 3
    assert np.load(tmp_path / "a.npz")["codes"].shape == (2, 3)

    np.savez(tmp_path / "b.npz", codes=np.zeros(2))  # the same formats, written by someone else
    Image.new("L", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "b.json").write_text(json.dumps({"step": 3}))
    (tmp_path / "c.json").write_text(json.dumps(["written_by", "dali-dist evaluate"]))
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    np.save(tmp_path / "f.npy", np.zeros(2))  # a format with no room for a mark
    for name in ("b.npz", "b.png", "b.json", "c.json", "d.npz", "e.png", "f.npy", "missing.npz"):
        assert not is_ours(tmp_path / name), name
    os.symlink(tmp_path / "a.npz", tmp_path / "link.npz")
    assert not is_ours(tmp_path / "link.npz")  # a link may point anywhere: never ours


def test_checks_refuse_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "theirs.npz").write_bytes(b"theirs")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        check_file(tmp_path / "afile" / "sub" / "z.npz", overwrite=False)
    with pytest.raises(UserError, match="is a folder"):
        check_file(tmp_path / "folder", overwrite=False)
    with pytest.raises(UserError, match="not written by dali-dist.*--overwrite"):
        check_file(tmp_path / "theirs.npz", overwrite=False)
    check_file(tmp_path / "theirs.npz", overwrite=True)
    check_file(tmp_path / "new" / "z.npz", overwrite=False)  # missing folders are made later
    save_npz(tmp_path / "ours.npz", "encode", codes=np.zeros(1))
    check_file(tmp_path / "ours.npz", overwrite=False)
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_folder(tmp_path / "afile", ["grid.png"], overwrite=False)
    (tmp_path / "folder" / "notes.txt").write_text("mine")  # other files in the folder are fine
    check_folder(tmp_path / "folder", ["grid.png"], overwrite=False)
    Image.new("L", (2, 2)).save(tmp_path / "folder" / "grid.png")
    with pytest.raises(UserError, match="grid.png: exists and was not written by dali-dist"):
        check_folder(tmp_path / "folder", ["grid.png"], overwrite=False)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    # numpy appends .npz to a name without it; the helpers write through a handle instead
    save_npz(tmp_path / "codes", "encode", x=np.ones(2))
    assert np.load(tmp_path / "codes")["x"].sum() == 2 and not list(tmp_path.glob(".*"))
