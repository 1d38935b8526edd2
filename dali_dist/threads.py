"""How many CPU threads a training process uses for torch's intra-op work.

PyTorch's default is one thread per core of the whole machine. Two processes on the same
cores then run twice as many busy threads as there are cores, and OpenMP's threads spin
at every barrier while waiting for a peer the scheduler has parked: small ops pay a time
slice each instead of microseconds (BENCHMARKS.md, "Threads"). The trainer therefore takes
its thread count from the cores it may run on (its CPU affinity, which Slurm and taskset
set), divided among the processes of its node, and an explicit ``OMP_NUM_THREADS`` always
wins.
"""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_processes() -> int:
    """Training processes on this node (set by torchrun / accelerate launch)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def intra_op_threads() -> int:
    """OMP_NUM_THREADS when it is a positive integer, else this process's share of its cores."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cores() // local_processes())


def configure_threads() -> int:
    """Set torch's intra-op thread count for this process; returns it. DALI_DIST_THREADS=torch
    leaves torch's own default (for side-by-side benchmarks)."""
    if os.environ.get("DALI_DIST_THREADS") == "torch":
        return torch.get_num_threads()
    n = intra_op_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
