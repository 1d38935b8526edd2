"""A private Slurm cluster for tests/test_slurm.py (see cluster.py)."""
