"""Shared fixtures: tiny CPU configs and a clean Accelerate state per test."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dali_dist.config import load_config

REPO = Path(__file__).resolve().parents[1]

TINY_GRID = [
    "model.g_hidden=[32, 32]", "model.g_norm=batch", "model.d_hidden=[32, 32]", "model.e_hidden=[16]",
    "train.batch_size=64", "train.log_every=5", "train.sample_every=0", "train.checkpoint_every=10",
    "eval.num_samples=200", "tracking.enabled=false",
]


@pytest.fixture
def tiny_grid_cfg():
    def make(*extra):
        return load_config("grid2d", [*TINY_GRID, *extra])
    return make


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def run_cli(*args, cwd=None, env=None, timeout=240):
    """Run ``python -m dali_dist.cli ...`` in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dali_dist.cli", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
