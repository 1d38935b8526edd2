"""A full disk or an unwritable run directory while a checkpoint is written: one `error:` line,
exit code 2, the previous checkpoint byte-for-byte intact and picked by `--resume auto`.

The full disk is real, not mocked: the trainer runs under RLIMIT_FSIZE (with SIGXFSZ ignored),
so its writes fail with EFBIG exactly where a full disk fails them with ENOSPC, through
safetensors, torch.save and plain file writes alike. RLIMIT_FSIZE binds root too."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import pytest

from dali_dist.checkpoint import complete_checkpoints
from dali_dist.cli import app
from dali_dist.cli_util import exits_cleanly
from tests.conftest import REPO, TINY_GRID

pytestmark = pytest.mark.timeout(240)
SETS = [*TINY_GRID, "train.checkpoint_every=5", "train.keep_checkpoints=5"]
# runs the trainer with every file capped at LIMIT bytes; a write past it fails with EFBIG
CAPPED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          "n = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
          "runpy.run_module('dali_dist.train', run_name='__main__', alter_sys=True)")


def train_cmd(run_dir, steps, *extra):
    sets = [a for s in [*SETS, f"train.steps={steps}", *extra] for a in ("--set", s)]
    return ["--config", "grid2d", "--run-dir", str(run_dir), *sets]


def run(args, limit=None):
    prefix = [sys.executable, "-c", CAPPED, str(limit)] if limit else [sys.executable, "-m", "dali_dist.train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=200, env=env, cwd=REPO)


def snapshot(run_dir):
    return {p: p.read_bytes() for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}


def test_full_disk_during_a_checkpoint(tmp_path):
    r = run(train_cmd(tmp_path, 10))
    assert r.returncode == 0, r.stderr[-2000:]
    before = snapshot(tmp_path)
    assert max(len(b) for b in before.values()) > 4096  # so a 4 KiB cap fails the checkpoint

    # resume with every file capped at 4 KiB: step-15's weights cannot be written
    r = run([*train_cmd(tmp_path, 20, "train.log_every=1000"), "--resume", "auto"], limit=4096)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "step-15: cannot write checkpoint (File too large)" in last, last
    assert "earlier checkpoints are intact" in last
    assert snapshot(tmp_path) == before  # nothing old touched, nothing half-new left
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [5, 10]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))

    r = run([*train_cmd(tmp_path, 20), "--resume", "auto"])  # space again
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "step-10" in r.stdout
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [5, 10, 15, 20]


def test_unwritable_checkpoint_directory(tmp_path, capsys, monkeypatch):
    args = ["train", *train_cmd(tmp_path, 5)]
    with pytest.raises(SystemExit) as e:
        exits_cleanly(app)(args)
    assert e.value.code == 0
    before = snapshot(tmp_path)
    ckpts = tmp_path / "checkpoints"
    if os.geteuid() != 0:
        ckpts.chmod(0o555)
    else:  # root writes through any mode bits: refuse the checkpoint's folder as the OS would
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self, *a, **kw):
            if self.name.startswith(".tmp-step-"):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *a, **kw)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            exits_cleanly(app)(["train", *train_cmd(tmp_path, 10), "--resume", "auto"])
    finally:
        ckpts.chmod(0o755)
        monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "step-10: cannot write checkpoint (Permission denied)" in lines[0]
    assert snapshot(tmp_path) == before and [s for s, _ in complete_checkpoints(tmp_path)] == [5]


def test_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(SystemExit) as e:
        exits_cleanly(app)(["train", *train_cmd(tmp_path / "taken" / "run", 5)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'taken'}")
