"""MLflow tracking: local SQLite default, params once, metrics with steps, images, resume into
the same run, and a clear error for a tracking server that does not answer."""

import re
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from dali_dist.errors import UserError
from dali_dist.train import EXIT_REQUEUE, train
from tests.integration.test_train import stop_after_calls


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


def _reset_accelerate():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


@pytest.mark.timeout(180)
def test_resume_into_another_store_makes_the_run_there_and_finds_it_next_time(tmp_path, tiny_grid_cfg, capsys):
    """README: tracking may change on resume. The recorded run is not in the new store: one
    warning line, a new run there, its id recorded; the next resume finds that run."""
    run = tmp_path / "runs" / "a"
    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=5"), run) == 0
    old_id = (run / "mlflow_run_id").read_text().strip()
    (tmp_path / "other").mkdir()
    other = f"sqlite:///{tmp_path / 'other' / 'm.db'}"
    capsys.readouterr()
    for steps in (10, 15):
        _reset_accelerate()
        assert train(tiny_grid_cfg("tracking.enabled=true", f"train.steps={steps}", f"tracking.uri={other}"),
                     run, resume="auto") == 0
        warnings = [ln for ln in capsys.readouterr().err.splitlines() if "mlflow_run_id" in ln]
        assert len(warnings) == (1 if steps == 10 else 0), warnings
        if steps == 10:
            assert f"run {old_id} is not in {other}" in warnings[0] and "new run" in warnings[0]
            new_id = (run / "mlflow_run_id").read_text().strip()
            assert new_id != old_id
    assert (run / "mlflow_run_id").read_text().strip() == new_id
    hist = MlflowClient(other).get_metric_history(new_id, "loss_d")
    assert [m.step for m in hist] == [10, 15]
    old = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_metric_history(old_id, "loss_d")
    assert [m.step for m in old] == [5]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("content,why", [(b"\x00\xffjunk\x9b", "holds no run id"), (b"", "holds no run id"),
                                         (b"0123456789abcdef0123456789abcdef\n", "is not in")])
def test_garbage_run_id_file(tmp_path, tiny_grid_cfg, capsys, content, why):
    """A damaged RUN_DIR/mlflow_run_id: training goes on in a new run and says so on one line;
    evaluation, which only attaches, refuses in one line naming the file."""
    from tests.conftest import run_cli

    run = tmp_path / "runs" / "a"
    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=5"), run) == 0
    id_file = run / "mlflow_run_id"
    id_file.write_bytes(content)
    r = run_cli("evaluate", "--run-dir", str(run), "--metrics", "modes", "--num-samples", "100", "--no-progress")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(id_file) in errors[0] and why in errors[0]
    assert id_file.read_bytes() == content
    _reset_accelerate()
    capsys.readouterr()
    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=10"), run, resume="auto") == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "mlflow_run_id" in ln]
    assert len(warnings) == 1 and why in warnings[0] and "Traceback" not in err, err[-2000:]
    new_id = id_file.read_text().strip()
    hist = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_metric_history(new_id, "loss_d")
    assert [m.step for m in hist] == [10]
