#!/usr/bin/env bash
# Set up a virtual environment with dali-dist installed (editable).
#
#   bash scripts/setup.sh                 # .venv with the package and its test tools
#   EXTRAS=dev,eval bash scripts/setup.sh # add clean-fid/torchvision for FID
#   VENV=/path/venv PYTHON=python3.11 bash scripts/setup.sh
#
# A torch that is already importable (a GPU cluster's CUDA build, in the venv or in the
# Python it is made from) is never replaced: everything else is installed under a
# constraint pinning that exact torch. Only when there is none is TORCH_SPEC installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: $PYTHON already has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'); the venv will use it"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch found; installing $TORCH_SPEC (the largest step: pip shows its progress)"
  echo "setup: for the CPU-only build (about 1 GB instead of several), run with"
  echo "setup:   TORCH_SPEC='--index-url https://download.pytorch.org/whl/cpu torch torchvision'"
  # shellcheck disable=SC2086  # TORCH_SPEC may name several requirements (torch torchvision)
  "$VENV/bin/python" -m pip --disable-pip-version-check install --progress-bar on $TORCH_SPEC
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
CONSTRAINT="$VENV/torch-constraint.txt"
# Without the local label (+cu130, +cpu): '==2.14.1' still matches the installed build, and
# a '<=' cap elsewhere does not treat '2.14.1+cu130' as newer than 2.14.1.
echo "torch==${TORCH_VERSION%%+*}" > "$CONSTRAINT"
echo "setup: torch $TORCH_VERSION (pinned); installing dali-dist[$EXTRAS] and its dependencies (accelerate, mlflow, webdataset, ...)"
"$VENV/bin/python" -m pip --disable-pip-version-check install --progress-bar on -c "$CONSTRAINT" -e ".[$EXTRAS]" \
  | grep -E --line-buffered "^(Collecting|Successfully installed|ERROR)" || true
"$VENV/bin/python" -c "import dali_dist" || { echo "setup: dali-dist did not install" >&2; exit 1; }
echo "setup: done; activate with: source $VENV/bin/activate"
