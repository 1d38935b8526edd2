"""README's real-data walk, run as written: the commands of its "Real data, start to finish"
block, on a small idx set named like Fashion-MNIST and with a few steps of smaller networks,
so README and behaviour cannot drift apart."""

from __future__ import annotations

import re
import shlex

import pytest

from tests._archives import make_mnist
from tests.conftest import REPO, run_cli

SECTION = "## Real data, start to finish (Fashion-MNIST)"
SOURCE = "/usr/share/datasets/fashion-mnist"
# appended to the command as written (a later --set or option wins): seconds, not minutes
SMALL = {
    "train": ["--set", "train.steps=4", "--set", "train.batch_size=20", "--set", "model.width=8",
              "--set", "model.g_fc_width=32", "--set", "model.d_head_width=32", "--set", "model.e_head_width=16"],
    "evaluate": ["--num-samples", "300"],
}


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README lost its section {SECTION!r}"
    block = re.search(r"```bash\n(.*?)```", text.split(SECTION, 1)[1], re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_block_is_the_whole_real_data_path():
    commands = [c[1] if c[1] not in ("runs", "prep") else " ".join(c[1:3]) for c in readme_commands()]
    assert all(c[0] == "dali-dist" for c in readme_commands())
    assert commands == ["prep mnist", "train", "evaluate", "reconstruct", "sample", "runs compare"]


@pytest.mark.timeout(600)
def test_readme_real_data_commands_run_as_written(tmp_path):
    make_mnist(tmp_path / "fashion-mnist", n_train=60, n_test=20)  # the folder name says Fashion-MNIST
    outputs = []
    for argv in readme_commands():
        args = [str(tmp_path / "fashion-mnist") if a == SOURCE else a for a in argv[1:]]
        args += SMALL.get(args[0], [])
        r = run_cli(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=300)
        assert r.returncode == 0, (args, r.stderr[-3000:])
        assert "Traceback" not in r.stderr
        outputs.append(r.stdout + r.stderr)
    train_out = outputs[1]
    assert "run directory: runs/fmnist" in train_out and "dali-dist evaluate --run-dir runs/fmnist" in train_out
    assert (tmp_path / "runs/fmnist/metrics.json").is_file()
    assert (tmp_path / "runs/fmnist/recon/grid.png").is_file()
    assert (tmp_path / "runs/fmnist/samples/grid.png").is_file()
    compare = outputs[-1].splitlines()
    row = next(line for line in compare if line.startswith("mnist-dali-"))  # <config>-<variant>-<6 hex>
    assert row.split()[2] == "fashion-mnist"  # the dataset as the manifest names it
