#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on CPU.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -m "not slow" # pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: real Fashion-MNIST (idx format) for the real-data tests, and
# a real Slurm (munge, slurmctld, slurmd, client) plus shellcheck for the sbatch-script tests.
APT_PACKAGES="dataset-fashion-mnist slurmctld slurmd slurm-client munge shellcheck"
if command -v apt-get >/dev/null 2>&1 && { [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v slurmctld >/dev/null; }; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  # shellcheck disable=SC2086
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null; } \
    || echo "test: could not install $APT_PACKAGES; the tests that need them will be skipped"
fi

# The eval extra (clean-fid) runs the FID tests against clean-fid itself; the deepspeed
# extra runs the ZeRO tests (DeepSpeed builds from source without its C++ ops).
EXTRAS=${EXTRAS:-dev,eval,deepspeed} bash scripts/setup.sh
# pytest exits 5 when it collects no test: that is a failure here too (set -e).
exec .venv/bin/python -m pytest -q "$@"
