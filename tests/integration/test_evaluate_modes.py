"""Modes of the evaluation job: newest, --all-checkpoints, --watch on a running job, and safe
re-runs (records in RUN_DIR/eval/, no duplicate MLflow points)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from dali_dist.evaluate import evaluated_steps
from dali_dist.train import train
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.timeout(240)


def _history(tmp_path, run, key="eval/modes_captured"):
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    return [m.step for m in client.get_metric_history((run / "mlflow_run_id").read_text().strip(), key)]


def test_all_checkpoints_rerun_and_watch(tmp_path, tiny_grid_cfg):
    run = tmp_path / "runs" / "a"
    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=20"), run) == 0
    args = ["evaluate", "--run-dir", str(run), "--metrics", "modes", "--num-samples", "100", "--no-progress"]
    r = run_cli(*args, "--all-checkpoints", "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["step"] == 20 and [h["step"] for h in m["history"]] == [10, 20]
    assert {"modes_captured", "high_quality_pct", "checkpoint"} <= set(m)
    assert evaluated_steps(run) == {10, 20}
    rec = json.loads((run / "eval" / "step-20.json").read_text())
    assert rec["metrics"]["modes"]["protocol"] == {"num_samples": 100, "seed": 12345}
    assert _history(tmp_path, run) == [10, 20]

    # the same request again: values reused, nothing logged twice
    r = run_cli(*args, "--all-checkpoints")
    assert r.returncode == 0 and "reusing recorded modes" in r.stderr
    assert _history(tmp_path, run) == [10, 20]
    # another protocol: recomputed, the record updated, still one MLflow point per step
    r = run_cli("evaluate", "--run-dir", str(run), "--metrics", "modes", "--num-samples", "150", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "eval" / "step-20.json").read_text())["metrics"]["modes"]["protocol"]["num_samples"] == 150
    assert _history(tmp_path, run) == [10, 20]

    # --watch follows a running job: a new checkpoint appears, then exit_code says 0
    (run / "exit_code").unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dali_dist.evaluate", *args[1:], "--watch", "--watch-interval", "0.3",
         "--watch-timeout", "150", "--out", str(tmp_path / "w.json")],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=30"), run, resume="auto") == 0
        out, err = watcher.communicate(timeout=150)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    assert "training finished" in err
    w = json.loads((tmp_path / "w.json").read_text())
    assert w["step"] == 30 and 30 in [h["step"] for h in w["history"]]
    assert 30 in evaluated_steps(run)
    assert _history(tmp_path, run) == [10, 20, 30]


def test_watch_timeout_and_bad_combinations(tmp_path, tiny_grid_cfg):
    run = tmp_path / "run"
    assert train(tiny_grid_cfg("train.steps=10"), run) == 0
    (run / "exit_code").unlink()
    r = run_cli("evaluate", "--run-dir", str(run), "--metrics", "modes", "--num-samples", "50", "--watch",
                "--watch-timeout", "0", "--no-progress")
    assert r.returncode == 0 and "--watch-timeout reached" in r.stderr
    assert evaluated_steps(run) == {10}
    r = run_cli("evaluate", "--checkpoint", str(run / "checkpoints/step-10"), "--all-checkpoints")
    assert r.returncode == 2 and "need --run-dir" in r.stderr
    r = run_cli("evaluate", "--run-dir", str(run), "--metrics", "mse")
    assert r.returncode == 2 and "applies to images" in r.stderr


def test_watch_ends_after_a_last_pass_when_the_slurm_job_is_over(tmp_path, tiny_grid_cfg):
    """No exit_code (the job was killed): a fake scontrol reports the job's state."""
    import os

    run = tmp_path / "run"
    assert train(tiny_grid_cfg("train.steps=10"), run) == 0
    (run / "exit_code").unlink()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "JobId=$4 JobName=dali-train JobState=$(cat ' + str(tmp_path / "state") + ')"\n')
    scontrol.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = ["evaluate", "--run-dir", str(run), "--metrics", "modes", "--num-samples", "50", "--watch",
            "--watch-interval", "0.2", "--slurm-job", "77", "--no-progress"]
    (tmp_path / "state").write_text("CANCELLED")
    r = run_cli(*args, "--watch-timeout", "600", env=env)
    assert r.returncode == 0 and "the training job is over" in r.stderr, r.stderr[-2000:]
    assert evaluated_steps(run) == {10}
    (tmp_path / "state").write_text("PENDING")  # requeued: not over, so only the timeout ends it
    r = run_cli(*args, "--watch-timeout", "1", env=env)
    assert r.returncode == 0 and "--watch-timeout reached" in r.stderr, r.stderr[-2000:]
    r = run_cli("evaluate", "--run-dir", str(run), "--slurm-job", "x; rm -rf /", "--watch")
    assert r.returncode == 2 and "a Slurm job id" in r.stderr


def test_fid_without_clean_fid_says_what_to_install(monkeypatch):
    """Runs whether or not clean-fid is installed: its modules are hidden as a missing extra."""
    import sys

    from dali_dist.errors import UserError
    from dali_dist.metrics.extractors import cleanfid_modules

    for name in [m for m in sys.modules if m == "cleanfid" or m.startswith("cleanfid.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cleanfid", None)  # `import cleanfid...` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'dali-dist\[eval\]'") as err:
        cleanfid_modules()
    assert re.search(r"\(ModuleNotFoundError: [^)]*'cleanfid[.']", str(err.value)), str(err.value)  # the cause, named


@pytest.fixture(scope="module")
def evaluated_grid_run(tmp_path_factory):
    """A 10-step grid run (one checkpoint, no tracking) whose RUN_DIR/exit_code says finished."""
    from dali_dist.config import load_config
    from tests.conftest import TINY_GRID

    run = tmp_path_factory.mktemp("eval") / "run"
    assert train(load_config("grid2d", [*TINY_GRID, "train.steps=10"]), run) == 0
    return run


@pytest.mark.parametrize("record,expect", [
    ("[1, 2]", "not a JSON object"), ('"abc"', "not a JSON object"), ("3", "not a JSON object"),
    ('{"metrics": [1]}', "metrics is not a mapping"), ('{"metrics": {"modes": 5}}', "metrics is not a mapping"),
    ('{"metrics": {"modes": {"protocol": {}, "values": 1}}}', "metrics is not a mapping"),
    ('{"attached": 3}', "wrong type"), ('{"mlflow_run_id": [1]}', "wrong type"),
])
@pytest.mark.parametrize("mode", ["--all-checkpoints", "--watch"])
def test_evaluation_record_of_the_wrong_shape(evaluated_grid_run, tmp_path, capsys, record, expect, mode):
    """RUN_DIR/eval/step-N.json that someone else wrote: one line naming it, left as it was."""
    import shutil

    from dali_dist.cli import app
    from dali_dist.cli_util import exits_cleanly

    run = tmp_path / "run"
    shutil.copytree(evaluated_grid_run, run)
    f = run / "eval" / "step-10.json"
    f.parent.mkdir()
    f.write_text(record)
    with pytest.raises(SystemExit) as e:
        exits_cleanly(app)(["evaluate", "--run-dir", str(run), mode, "--metrics", "modes", "--num-samples", "100",
                            "--no-progress", "--no-track", "--watch-interval", "0"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert e.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert str(f) in errors[0] and expect in errors[0]
    assert f.read_text() == record


@pytest.mark.parametrize("content", [b"\xff\xfe\x00junk", b"", b"done\n"])
def test_watch_with_a_damaged_exit_code(evaluated_grid_run, tmp_path, capsys, content):
    """RUN_DIR/exit_code is read as data: anything but an integer is one line naming it."""
    import shutil

    from dali_dist.cli import app
    from dali_dist.cli_util import exits_cleanly

    run = tmp_path / "run"
    shutil.copytree(evaluated_grid_run, run)
    (run / "exit_code").write_bytes(content)
    with pytest.raises(SystemExit) as e:
        exits_cleanly(app)(["evaluate", "--run-dir", str(run), "--watch", "--metrics", "modes", "--num-samples", "100",
                            "--no-progress", "--no-track", "--watch-timeout", "0"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert e.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert str(run / "exit_code") in errors[0] and "not an exit code" in errors[0]
