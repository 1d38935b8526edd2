"""Two evaluation processes (gloo on CPU, under `accelerate launch`) give the numbers of one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests._eval_kit import image_cfg, make_checkpoint, make_shards, save_tiny_inception
from tests.conftest import REPO


pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]


def _cleanfid_ok() -> bool:
    try:
        import cleanfid.fid  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def test_two_processes_match_one(tmp_path):
    shards, _ = make_shards(tmp_path, n_train=130, n_test=51)
    ckpt = make_checkpoint(tmp_path / "run", image_cfg(shards))
    metrics = "mse"
    extra = []
    if _cleanfid_ok():
        from dali_dist.classifier import train_classifier

        weights = save_tiny_inception(tmp_path / "inception.pt")
        train_classifier(shards, tmp_path / "clf.safetensors", epochs=1, progress=False)
        metrics = "mse,fid,is"
        extra = ["--inception-weights", str(weights), "--classifier", str(tmp_path / "clf.safetensors")]
    args = ["--checkpoint", str(ckpt), "--metrics", metrics, "--num-samples", "97", "--batch-size", "20",
            "--no-track", "--no-progress", "--force", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
         "--main_process_port", "29571", "-m", "dali_dist.evaluate", *args, "--out", str(tmp_path / "two.json")],
        capture_output=True, text=True, timeout=200, env=env, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stderr
    shutil.rmtree(shards / "fid_stats", ignore_errors=True)  # the single process computes its own
    one = subprocess.run([sys.executable, "-m", "dali_dist.evaluate", *args, "--out", str(tmp_path / "one.json")],
                         capture_output=True, text=True, timeout=200, env=env, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    keys = [k for k in ("mse", "mse_std", "fid", "inception_score", "inception_score_std", "fid_classifier") if k in a]
    assert set(keys) <= set(b) and a["mse_num_images"] == b["mse_num_images"] == 51
    for k in keys:
        assert b[k] == pytest.approx(a[k], rel=1e-6), k
