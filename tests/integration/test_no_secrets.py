"""No credentials in tracking: environment secrets, URI userinfo and secret-bearing data URLs
never become MLflow params or tags (nor error lines); servers the project starts bind to
127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from dali_dist.errors import UserError
from dali_dist.tracking import redact, start_tracking
from dali_dist.train import train
from tests.conftest import REPO, TINY_GRID
from tests.integration.test_tracking_server import server  # noqa: F401 - a real MLflow server on 127.0.0.1

pytestmark = pytest.mark.timeout(180)

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLESESSIONTOKEN0042",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-0xC0FFEE",
    "MLFLOW_TRACKING_TOKEN": "mlflow-token-0xBADF00D",
    "HF_TOKEN": "hf_exampleTOKENvalue123456",
    "WANDB_API_KEY": "wandb-api-key-1234567890",
    "DB_PASSWORD": "db-password-hunter22",
}
URI_PASSWORD = "uri-password-s3cr3t"


@pytest.fixture
def secret_env(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return [*SECRETS.values(), URI_PASSWORD]


def leaks(run, secrets) -> list[str]:
    items = [*run.data.params.items(), *run.data.tags.items()]
    return [f"{k}={v}" for k, v in items for s in secrets if s in k or s in v]


def test_redact():
    assert redact(f"http://alice:{URI_PASSWORD}@127.0.0.1:5000/x") == "http://***@127.0.0.1:5000/x"
    assert redact("pipe:curl -s -u bob:pw https://h/s-{0..9}.tar") == "pipe:curl -s -u *** https://h/s-{0..9}.tar"
    assert redact('pipe:curl -H "Authorization: Bearer abc" u') == "pipe:curl -H *** u"
    assert redact("https://b.s3/x.tar?X-Amz-Signature=ab12&n=1") == "https://b.s3/x.tar?X-Amz-Signature=***&n=1"
    assert redact("sqlite:////tmp/runs/mlflow.db") == "sqlite:////tmp/runs/mlflow.db"
    assert redact("[256, 256]") == "[256, 256]"


def test_env_secrets_are_masked_wherever_they_appear(secret_env):
    assert redact(f"s3://bucket/{SECRETS['HF_TOKEN']}/x") == "s3://bucket/***/x"


def test_a_tracked_training_run_holds_no_secret(tmp_path, tiny_grid_cfg, secret_env):
    run = tmp_path / "runs" / "a"
    assert train(tiny_grid_cfg("tracking.enabled=true", "train.steps=3", "train.sample_every=0"), run) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    r = client.get_run((run / "mlflow_run_id").read_text().strip())
    assert r.data.params and r.data.tags
    assert not leaks(r, secret_env)
    assert not [k for k in [*r.data.params, *r.data.tags] if k in SECRETS]  # no env var logged by name
    exp = client.get_experiment(r.info.experiment_id)
    assert not any(s in exp.artifact_location for s in secret_env)


def test_params_and_tags_are_redacted_before_they_are_stored(tmp_path, secret_env):
    """Whatever a caller passes (a data URL with credentials, a tag built from the environment),
    what reaches the store is redacted."""
    (tmp_path / "run").mkdir()
    source = f"pipe:curl -s -u bob:{URI_PASSWORD} https://alice:{URI_PASSWORD}@host/shard-{{0..9}}.tar"
    t = start_tracking(tmp_path / "run", uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", run_name="r",
                       params={"data.source": source, "lr": 0.001},
                       tags={"launcher": f"token={SECRETS['HF_TOKEN']}", "uri": f"http://u:{URI_PASSWORD}@h:1"})
    t.close()
    r = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(t.run_id)
    assert not leaks(r, secret_env)
    assert r.data.params["lr"] == "0.001" and r.data.params["data.source"].startswith("pipe:curl -s -u ***")


def test_unreachable_server_error_does_not_print_the_password(tmp_path, tiny_grid_cfg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_grid_cfg("tracking.enabled=true", f"tracking.uri=http://alice:{URI_PASSWORD}@127.0.0.1:{port}",
                        "train.steps=2")
    with pytest.raises(UserError) as e:
        train(cfg, tmp_path / "run")
    assert URI_PASSWORD not in str(e.value) and f"http://***@127.0.0.1:{port}" in str(e.value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_run_with_userinfo_in_the_uri(tmp_path, secret_env, server):
    """A real MLflow server reached through http://user:password@127.0.0.1:port."""
    uri, _ = server
    cred_uri = uri.replace("http://", f"http://alice:{URI_PASSWORD}@")
    sets = [a for s in [*TINY_GRID, "tracking.enabled=true", "train.steps=3"] for a in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(tmp_path / "run"),
                        "--tracking-uri", cred_uri, *sets], capture_output=True, text=True, timeout=200, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [s for s in secret_env if s in r.stdout + r.stderr], (r.stdout + r.stderr)[-3000:]
    run = MlflowClient(uri).get_run((tmp_path / "run" / "mlflow_run_id").read_text().strip())
    assert run.data.params and not leaks(run, secret_env)


# ------------------------------------------------------------------------------------------ servers


def _server_lines() -> list[tuple[str, str]]:
    files = [*REPO.glob("scripts/*"), *REPO.glob("slurm/*"), *REPO.glob("launch/*"), *REPO.glob("benchmarks/*.py"),
             *REPO.glob("*.md"), *REPO.glob("slurm/*.md")]
    out = []
    for f in files:
        if f.is_file():
            for line in f.read_text(errors="replace").splitlines():
                if re.search(r"mlflow[\s\"',]+(server|ui)\b", line):
                    out.append((f.name, line))
    return out


def test_servers_we_start_or_suggest_bind_localhost():
    lines = _server_lines()
    assert "README.md" in {name for name, _ in lines}  # README tells users how to browse runs
    for name, line in lines:
        assert not re.search(r"(--host|-h)[ =]+(0\.0\.0\.0|::|\*)", line), f"{name}: {line}"
        host = re.search(r"(--host|-h)[ =]+(\S+)", line)
        assert host is None or host.group(2) in ("127.0.0.1", "localhost"), f"{name}: {line}"
    from mlflow.cli import cli

    host = next(p for p in cli.commands["server"].params if p.name == "host")
    assert host.default == "127.0.0.1"  # `mlflow server` / `mlflow ui` without --host stay local
