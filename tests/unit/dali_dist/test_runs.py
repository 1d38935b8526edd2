"""runs.py (`dali-dist runs compare`): a store that is not there is one line before MLflow is
touched; on a small MLflow store, one row per run in start order with its tags, last step and
latest metrics (4 significant digits, blank when absent); an unknown experiment names the known."""

from __future__ import annotations

import pytest

from dali_dist.errors import UserError
from dali_dist.runs import _fmt, compare_command

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _compare(capsys, uri, experiment=None, metrics="eval/fid,eval/mse"):
    compare_command(experiment=experiment, tracking_uri=uri, metrics=metrics)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("make, msg", [
    (lambda p: None, "is not a directory"),                       # parent folder absent
    (lambda p: p.parent.mkdir() or p.write_bytes(b""), "no tracking store here"),
    (lambda p: p.parent.mkdir() or p.write_text("hello"), "is not an SQLite database"),
    (lambda p: p.mkdir(parents=True), "is a directory, not an SQLite file"),
])
def test_no_store_is_one_line(tmp_path, capsys, make, msg):
    path = tmp_path / "runs" / "mlflow.db"
    make(path)
    with pytest.raises(UserError, match=msg):
        _compare(capsys, f"sqlite:///{path}")
    assert capsys.readouterr().out == ""


def test_fmt():
    assert [_fmt(None), _fmt(12.3456), _fmt(0.000123456), _fmt(3.0), _fmt(123456.0)] == ["", "12.35", "0.0001235", "3",
                                                                                        "1.235e+05"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("runs") / "mlflow.db"
    uri = f"sqlite:///{path}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("mnist")
    for name, variant, steps, fid in (("first", "dali", [5, 40, 20], 12.3456), ("second-run", "gan", [], None)):
        r = c.create_run(exp, run_name=name, tags={"variant": variant, "dataset": "mnist"})
        for s in steps:
            c.log_metric(r.info.run_id, "loss_d", 0.5, step=s)
        if fid is not None:
            c.log_metric(r.info.run_id, "eval/fid", fid, step=40)
        c.set_terminated(r.info.run_id)
    c.create_experiment("cifar10")
    return uri


def test_one_row_per_run(store, capsys):
    lines = _compare(capsys, store)
    rows = [line.split() for line in lines]
    assert rows[0] == ["run", "variant", "dataset", "status", "step", "eval/fid", "eval/mse"]
    assert rows[1] == ["first", "dali", "mnist", "FINISHED", "40", "12.35"]  # the last step, not the last logged
    assert rows[2] == ["second-run", "gan", "mnist", "FINISHED"]
    assert len(lines) == 3
    assert lines[0].index("variant") == lines[1].index("dali") == lines[2].index("gan")  # aligned columns
    assert lines[0].index("eval/fid") == lines[1].index("12.35")


def test_experiments(store, capsys):
    assert [line.split()[0] for line in _compare(capsys, store, experiment="mnist")] == ["run", "first", "second-run"]
    assert [line.split() for line in _compare(capsys, store, experiment="cifar10", metrics="eval/fid")] == [
        ["run", "variant", "dataset", "status", "step", "eval/fid"]]
    with pytest.raises(UserError, match=r"^experiment 'nope' not found \(known: ") as info:
        _compare(capsys, store, experiment="nope")
    assert "mnist" in str(info.value) and "cifar10" in str(info.value)
