#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on CPU.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -m "not slow" # pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."

# Real Fashion-MNIST (idx format) for the real-data tests, from the Debian package.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "test: could not install dataset-fashion-mnist; its tests will be skipped"
fi

# The eval extra (clean-fid) runs the FID tests against clean-fid itself.
EXTRAS=${EXTRAS:-dev,eval} bash scripts/setup.sh
# pytest exits 5 when it collects no test: that is a failure here too (set -e).
exec .venv/bin/python -m pytest -q "$@"
