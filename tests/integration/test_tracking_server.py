"""A real MLflow tracking server on 127.0.0.1, started and stopped by PID: training logs to
it, and keeps training (with a warning) when the server goes away mid-run."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, TINY_GRID

pytestmark = [pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start within 90 s")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group only, by PID
        proc.wait(timeout=30)


def train_cmd(run_dir, uri, *sets):
    return [sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(run_dir),
            "--tracking-uri", uri, *[a for s in [*TINY_GRID, "tracking.enabled=true", *sets] for a in ("--set", s)]]


@pytest.mark.timeout(300)
def test_training_logs_to_a_server_and_survives_its_loss(tmp_path, server):
    uri, proc = server
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(train_cmd(tmp_path / "a", uri, "train.steps=20", "train.sample_every=10"), capture_output=True, text=True,
                       timeout=120, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = (tmp_path / "a" / "mlflow_run_id").read_text().strip()
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [5, 10, 15, 20]
    # the evaluation job attaches its metrics to the same run, at the checkpoint's step
    r = subprocess.run([sys.executable, "-m", "dali_dist.evaluate", "--run-dir", str(tmp_path / "a"), "--metrics", "modes",
                        "--num-samples", "300"], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [m.step for m in client.get_metric_history(run_id, "eval/modes_captured")] == [20]
    assert "images/samples-0000020.png" in [a.path for a in client.list_artifacts(run_id, "images")]
    r = subprocess.run([sys.executable, "-m", "dali_dist.cli", "runs", "compare", "--tracking-uri", uri,
                        "--experiment", "grid2d"], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert r.returncode == 0 and "grid2d" in r.stdout, r.stderr

    # the server dies while a longer run is training: the run finishes anyway, with a warning
    down_env = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    p = subprocess.Popen(train_cmd(tmp_path / "b", uri, "train.steps=4000", "train.log_every=20", "train.sample_every=1000"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=down_env, cwd=REPO)
    deadline = time.time() + 60
    while not (tmp_path / "b" / "mlflow_run_id").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-2000:]
    assert "warning: MLflow" in err
    assert (tmp_path / "b" / "checkpoints" / "step-4000").is_dir()
