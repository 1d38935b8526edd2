"""MLflow tracking: local SQLite default, params once, metrics with steps, images, resume into
the same run, and a clear error for a tracking server that does not answer."""

import re
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from dali_dist.errors import UserError
from dali_dist.train import EXIT_REQUEUE, train
from tests.test_train import stop_after_calls


@pytest.mark.timeout(180)
def test_run_logged_to_local_store_and_resumed_into_same_run(tmp_path, tiny_grid_cfg, monkeypatch):
    run = tmp_path / "runs" / "a"
    cfg = tiny_grid_cfg("tracking.enabled=true", "train.steps=20", "train.sample_every=10")
    with monkeypatch.context() as m:
        stop_after_calls(m, 13)
        assert train(cfg, run) == EXIT_REQUEUE
    run_id = (run / "mlflow_run_id").read_text().strip()
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(cfg, run, resume="auto") == 0
    assert (run / "mlflow_run_id").read_text().strip() == run_id

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["model.variant"] == "dali" and r.data.params["world_size"] == "1"
    assert "train.steps" not in r.data.params  # may change on resume: not a param
    assert r.data.tags["dataset"] == "grid2d"
    steps = [m.step for m in client.get_metric_history(run_id, "loss_d")]
    assert steps == [5, 10, 13, 15, 20]
    assert [m.step for m in client.get_metric_history(run_id, "system/process_rss_gb")] == steps
    arts = [a.path for a in client.list_artifacts(run_id, "images")]
    assert "images/samples-0000010.png" in arts and "images/samples-0000020.png" in arts
    assert (tmp_path / "runs" / "mlartifacts").is_dir()


def test_dead_server_fails_fast_with_one_line(tmp_path, tiny_grid_cfg):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_grid_cfg("tracking.enabled=true", f"tracking.uri=http://127.0.0.1:{port}", "train.steps=5")
    t0 = time.time()
    with pytest.raises(UserError, match=f"tracking server http://127.0.0.1:{port} did not answer"):
        train(cfg, tmp_path / "run")
    assert time.time() - t0 < 30


@pytest.mark.timeout(180)
def test_evaluation_job_attaches_metrics_to_the_training_run(tmp_path, tiny_grid_cfg):
    from tests.conftest import run_cli

    run = tmp_path / "runs" / "a"
    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=10"), run) == 0
    r = run_cli("evaluate", "--run-dir", str(run), "--metrics", "modes", "--num-samples", "100")
    assert r.returncode == 0, r.stderr
    run_id = (run / "mlflow_run_id").read_text().strip()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    hist = client.get_metric_history(run_id, "eval/modes_captured")
    assert [m.step for m in hist] == [10]


@pytest.mark.timeout(120)
def test_runs_compare_lists_runs_with_metrics(tmp_path, tiny_grid_cfg):
    from tests.conftest import run_cli

    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=5", "name=first"), tmp_path / "runs" / "a") == 0
    r = run_cli("runs", "compare", "--experiment", "grid2d", "--metrics", "loss_d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["run", "variant", "dataset", "status", "step", "loss_d"]
    name, *rest = lines[1].split()[:5]
    assert rest == ["dali", "grid2d", "FINISHED", "5"]
    # <config name>-<variant>-<6 hex of the run dir>: runs of one preset tell apart
    assert re.fullmatch(r"first-dali-[0-9a-f]{6}", name), name
    r = run_cli("runs", "compare", "--experiment", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr
