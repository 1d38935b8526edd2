"""A private Slurm cluster for tests/integration/test_slurm.py (see cluster.py)."""
