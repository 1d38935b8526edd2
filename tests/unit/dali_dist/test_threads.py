"""The trainer's CPU thread count: OMP_NUM_THREADS wins, else its share of its usable cores;
OpenMP waits passively unless the user says otherwise."""

import os
import subprocess
import sys

import pytest

from dali_dist import threads

from tests.conftest import REPO


def test_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.intra_op_threads() == 3


@pytest.mark.parametrize("cores, procs, expected", [(8, 1, 8), (8, 2, 4), (2, 4, 1), (1, 1, 1)])
def test_share_of_the_usable_cores(monkeypatch, cores, procs, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(procs))
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.intra_op_threads() == expected


@pytest.mark.parametrize("value", ["", "0", "two", "-1"])
def test_a_meaningless_omp_num_threads_falls_back_to_the_cores(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 6)
    assert threads.intra_op_threads() == 6


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform (macOS)")
def test_usable_cores_follow_the_affinity_mask():
    code = "import os; os.sched_setaffinity(0, {0}); from dali_dist.threads import usable_cores; print(usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("env, expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                           ({"DALI_DIST_THREADS": "torch"}, "unset")])
def test_openmp_waits_passively_unless_told_otherwise(env, expected):
    code = "import os, dali_dist, torch; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "DALI_DIST_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**base, **env, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == expected
