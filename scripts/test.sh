#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on CPU.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -m "not slow" # pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: real Fashion-MNIST (idx format) for the real-data tests, and
# a real Slurm (munge, slurmctld, slurmd, client) plus shellcheck for the sbatch-script tests.
# Each is installed when its own marker is missing (not only when two of them are), so a
# machine with Slurm but no shellcheck still gets shellcheck.
need() { [ -e "$2" ] || command -v "$2" >/dev/null 2>&1 || MISSING="$MISSING $1"; }
MISSING=""
need dataset-fashion-mnist /usr/share/datasets/fashion-mnist
need slurmctld slurmctld
need slurmd slurmd
need slurm-client sbatch
need munge munged
need shellcheck shellcheck
if [ -n "$MISSING" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  echo "test: installing Debian packages:$MISSING"
  # shellcheck disable=SC2086
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null; } \
    || echo "test: could not install$MISSING; the tests that need them will be skipped"
fi

# The eval extra (clean-fid) runs the FID tests against clean-fid itself; the deepspeed
# extra runs the ZeRO tests (DeepSpeed builds from source without its C++ ops).
EXTRAS=${EXTRAS:-dev,eval,deepspeed} bash scripts/setup.sh
# pytest exits 5 when it collects no test: that is a failure here too (set -e).
exec .venv/bin/python -m pytest -q "$@"
