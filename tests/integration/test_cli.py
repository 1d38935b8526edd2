"""The command line as users type it: one-line errors with exit code 2, dry-run, entry points."""

import sys
import subprocess

import numpy as np
import pytest
import yaml

from dali_dist.config import config_from_dict, load_config
from tests.conftest import REPO, TINY_GRID, run_cli

SETS = [a for s in TINY_GRID for a in ("--set", s)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, expect", [
    (["--set", "train.stepz=5"], "unknown key 'train.stepz' (did you mean 'steps'?)"),
    (["--set", "tran.steps=5"], "unknown key 'tran' (did you mean 'train'?)"),
    (["--set", "train.steps=abc"], "train.steps must be an integer"),
    (["--set", "train.steps=0"], "train.steps must be a positive integer"),
    (["--set", "optim.beta1=1.5"], "optim.beta1 must be in [0, 1)"),
    (["--set", "model.variant=ali-x"], "model.variant must be one of"),
    (["--set", "train.steps"], "expected section.field=value"),
    (["--config", "mnst"], "did you mean 'mnist'?"),
    (["--config", "mnist"], "data.source is required for mnist"),
    (["--config", "/nonexistent/cfg.yaml"], "config file not found"),
])
def test_bad_config_is_one_line_exit_2(args, expect):
    r = run_cli("train", *args, "--dry-run")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, expect", [
    (["sample", "--run-dir", "r", "--num", "0", "--out", "s.npy"], "'--num'"),
    (["sample", "--bogus"], "No such option: --bogus"),
    (["train", "--set"], "Option '--set' requires an argument"),
    (["encode", "--checkpoint", "c"], "Missing option '--out'"),
    (["prep", "mnist", "--source", "s", "--out", "o", "--shard-size", "x"], "'--shard-size'"),
    (["evaluate", "--run-dir", "r", "--watch-interval", "-1"], "'--watch-interval'"),
])
def test_option_errors_from_typer_are_one_line_exit_2(args, expect, tmp_path):
    """Typer's own checks (ranges, unknown or missing options) end like every other bad input:
    one `error:` line and exit 2, not a usage box."""
    r = run_cli(*args, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and expect in lines[0], r.stderr


def test_malformed_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [steps: 3\n")
    r = run_cli("train", "--config", str(bad), "--dry-run")
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_dry_run_prints_a_config_that_loads_back():
    r = run_cli("train", "--config", "grid2d", "--set", "train.steps=123", "--set", "model.g_hidden=[8,8]", "--dry-run")
    assert r.returncode == 0, r.stderr
    cfg = config_from_dict(yaml.safe_load(r.stdout))
    assert cfg.train.steps == 123 and cfg.model.g_hidden == [8, 8]
    assert cfg == load_config("grid2d", ["train.steps=123", "model.g_hidden=[8,8]"])


def test_every_preset_resolves():
    for name in ("grid2d", "mnist", "cifar10", "celeba"):
        cfg = load_config(name, data=None if name == "grid2d" else "/shards")
        assert cfg.name == name


@pytest.mark.timeout(240)
def test_module_entry_point_trains_then_sample_and_evaluate(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "dali_dist.train", "--config", "grid2d", "--run-dir", str(run),
         *SETS, "--set", "train.steps=10"],
        capture_output=True, text=True, timeout=200, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    # where the run went, at the start, and what to run next, at the end
    assert f"run directory: {run}" in r.stdout
    tail = r.stdout[r.stdout.index("done: "):]
    assert f"dali-dist evaluate --run-dir {run} --metrics modes" in tail and "next:" in tail
    ck = run / "checkpoints" / "step-10"
    r = run_cli("sample", "--checkpoint", str(ck), "--num", "7", "--out", str(tmp_path / "s.npy"))
    assert r.returncode == 0, r.stderr
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (7, 2) and arr.dtype == np.float32
    r = run_cli("evaluate", "--checkpoint", str(ck / "export"), "--metrics", "modes", "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    import json
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["step"] == 10 and {"modes_captured", "high_quality_pct"} <= set(m)
    # a second run into the same directory without --resume refuses, naming the directory
    r = run_cli("train", "--config", "grid2d", "--run-dir", str(run), *SETS, "--set", "train.steps=10")
    assert r.returncode == 2 and str(run) in r.stderr and "--resume auto" in r.stderr


def test_evaluate_bad_inputs(tmp_path):
    r = run_cli("evaluate", "--checkpoint", str(tmp_path), "--metrics", "modes")
    assert r.returncode == 2 and "not a checkpoint" in r.stderr
    r = run_cli("evaluate", "--run-dir", str(tmp_path), "--metrics", "modes")
    assert r.returncode == 2 and "no complete checkpoint" in r.stderr


def test_yaml_boolean_spellings_reach_string_choices():
    # YAML 1.1 reads an unquoted `no` as False; `--set train.mixed_precision=no` must still work
    from dali_dist.config import load_config

    assert load_config("grid2d", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config("grid2d", ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


@pytest.mark.timeout(180)
def test_sample_export_stops_between_batches_on_sigterm(tmp_path, tiny_grid_cfg):
    """A long export on a preemptible node: SIGTERM ends it at the next batch with exit 75 and
    no partial output file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from dali_dist.train import train
    from tests.conftest import REPO

    assert train(tiny_grid_cfg("train.steps=2"), tmp_path / "run") == 0
    out = tmp_path / "samples.npy"
    p = subprocess.Popen([sys.executable, "-m", "dali_dist.cli", "sample", "--run-dir", str(tmp_path / "run"),
                          "--num", "5000000", "--batch-size", "1000", "--out", str(out)],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    # signal once the export is under way (its start line is on stderr), however slow the start
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while "samples from" not in "".join(chunks) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # a few batches in
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(chunks)
    assert p.returncode == 75, err[-2000:]
    assert "nothing written" in err and not out.exists() and not list(tmp_path.glob("samples.npy*"))


def test_data_prep_has_no_import_cycle():
    """The prep CLI registers the source commands; no source module imports the CLI back."""
    import ast

    from tests.conftest import REPO

    for path in sorted((REPO / "data_prep").glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names}
                assert not any(n in ("cli", "data_prep.cli") or n.endswith(".cli") for n in names), path.name
