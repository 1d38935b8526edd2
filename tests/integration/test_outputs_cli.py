"""Commands write their own output and nothing else, through the CLI: every command refuses to
replace a user's file, reruns over its own, and replaces a user's file with --overwrite (the
rule itself: tests/unit/dali_dist/test_outputs.py)."""

from __future__ import annotations

import pytest

from dali_dist.outputs import is_ours
from tests.conftest import run_cli


def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def shards_and_checkpoint(tmp_path_factory):
    from tests._archives import make_mnist
    from tests.unit.dali_dist.test_inference import export

    root = tmp_path_factory.mktemp("outputs")
    make_mnist(root / "raw", n_train=20, n_test=9)
    assert run_cli("prep", "mnist", "--source", str(root / "raw"), "--out", str(root / "sh"), "--quiet").returncode == 0
    return root / "sh", export(root)


@pytest.mark.timeout(240)
def test_commands_never_replace_a_users_file_and_rerun_over_their_own(tmp_path, shards_and_checkpoint):
    sh, ck = shards_and_checkpoint
    common = ["--checkpoint", str(ck), "--data", str(sh)]
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "z.npz").write_bytes(b"a user's archive")
    (tmp_path / "user" / "grid.png").write_bytes(b"a user's picture")
    (tmp_path / "user" / "m.json").write_text('{"mine": true}')
    (tmp_path / "user" / "000000.png").write_bytes(b"a user's picture")
    before = _snapshot(tmp_path / "user")
    refused = {
        "encode": ["encode", *common, "--out", str(tmp_path / "user" / "z.npz")],
        "reconstruct": ["reconstruct", *common, "--num", "3", "--out", str(tmp_path / "user")],
        "interpolate": ["interpolate", *common, "--pairs", "1", "--steps", "2", "--out", str(tmp_path / "user")],
        "sample": ["sample", "--checkpoint", str(ck), "--num", "3", "--out", str(tmp_path / "user")],
        "evaluate": ["evaluate", *common, "--metrics", "mse", "--no-track", "--out", str(tmp_path / "user" / "m.json")],
        "train-classifier": ["train-classifier", "--data", str(sh), "--out", str(tmp_path / "user" / "grid.png")],
    }
    for name, args in refused.items():
        r = run_cli(*args)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "--overwrite" in errors[0], (name, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
    assert _snapshot(tmp_path / "user") == before

    # their own output, written twice: the second run replaces the first without --overwrite
    # (the second time through --run-dir: the same checkpoint, named the other way)
    for name_it in (["--checkpoint", str(ck)], ["--run-dir", str(ck.parent.parent)]):
        assert run_cli("encode", *name_it, "--data", str(sh), "--out", str(tmp_path / "own" / "z.npz")).returncode == 0
        r = run_cli("reconstruct", *name_it, "--data", str(sh), "--num", "3", "--out", str(tmp_path / "own"))
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["grid.png", "reconstructions.npz", "z.npz"]
    # and a user's file is replaced when they say so
    r = run_cli("encode", *common, "--out", str(tmp_path / "user" / "z.npz"), "--overwrite")
    assert r.returncode == 0 and is_ours(tmp_path / "user" / "z.npz")
