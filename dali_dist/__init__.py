"""dali-dist: distributed training of DALI (Decomposed Adversarial Learned Inference)."""

import os
import sys

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier spin on their core by default. When two processes
# share the cores (two trainings, training beside evaluation or tests), a spinning thread
# burns the time slice its peer needs, and per-step time grew 4x on 2 cores (BENCHMARKS.md,
# "Threads"). Passive waiting costs about 10 % on a machine the run has to itself. The
# policy is read once, when torch loads its OpenMP runtime, so it is set here, before any
# dali-dist module imports torch; an explicit OMP_WAIT_POLICY (ACTIVE for dedicated nodes)
# always wins, and DALI_DIST_THREADS=torch keeps torch's own defaults (benchmarks/threads.py).
if "torch" not in sys.modules and os.environ.get("DALI_DIST_THREADS") != "torch":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
