"""Bad checkpoints given to `sample`, `evaluate`, `encode` and `train --resume`: truncated
safetensors, another model's export, a pickle that would run code, a malformed train state.
Each ends in one `error: ...` line and exit code 2; nothing in the file is ever executed."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch

from dali_dist.checkpoint import TrainState, save_checkpoint
from dali_dist.cli import app
from dali_dist.cli_util import exits_cleanly
from dali_dist.config import load_config
from dali_dist.models import build_models
from tests.conftest import TINY_GRID

pytestmark = pytest.mark.timeout(120)
GRID_SETS = [*TINY_GRID, "train.steps=4", "train.checkpoint_every=2"]


def cli(capsys, *args) -> str:
    """Run `dali-dist ARGS` in-process; expect exit 2 and return the one stderr line."""
    with pytest.raises(SystemExit) as e:
        exits_cleanly(app)([*map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert e.value.code == 2 and len(lines) == 1, err[-2000:]
    return lines[0]


def train_args(run_dir, *extra):
    return ["train", "--config", "grid2d", "--run-dir", run_dir, *[a for s in GRID_SETS for a in ("--set", s)], *extra]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """A real 4-step grid2d run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("grid") / "run"
    with pytest.raises(SystemExit) as e:
        exits_cleanly(app)(list(map(str, train_args(run))))
    assert e.value.code == 0
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    return run


@pytest.fixture(scope="module")
def mnist_ckpt(tmp_path_factory):
    cfg = load_config("mnist", ["model.width=8", "model.latent_dim=6"], data="unused")
    torch.manual_seed(0)
    G, D, E = build_models(cfg)
    opt = torch.optim.Adam(D.parameters())
    return save_checkpoint(tmp_path_factory.mktemp("mnist"), cfg, TrainState(step=3), {"G": G, "D": D, "E": E},
                           {"d": opt}, {"G": G, "D": D, "E": E})


@pytest.fixture
def grid_copy(grid_run, tmp_path):
    """A private copy of the grid run (tests damage it)."""
    run = tmp_path / "run"
    shutil.copytree(grid_run, run)
    return run


def export_uses(tmp_path, capsys, export: Path) -> list[str]:
    """The error line of each command that reads an export."""
    return [
        cli(capsys, "sample", "--checkpoint", export, "--num", "3", "--out", tmp_path / "s.npy"),
        cli(capsys, "evaluate", "--checkpoint", export, "--metrics", "modes", "--num-samples", "10", "--no-track",
            "--no-progress"),
        cli(capsys, "encode", "--checkpoint", export, "--data", tmp_path, "--out", tmp_path / "z.npz"),
    ]


# ------------------------------------------------------------------------------------------ exports


def test_truncated_safetensors(grid_copy, tmp_path, capsys):
    f = grid_copy / "checkpoints/step-4/export/G.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    for msg in export_uses(tmp_path, capsys, grid_copy / "checkpoints/step-4"):
        assert str(f) in msg and "unreadable weights" in msg


def test_safetensors_header_claiming_an_absurd_size(grid_copy, tmp_path, capsys):
    f = grid_copy / "checkpoints/step-4/export/D.safetensors"
    f.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    msg = cli(capsys, "sample", "--checkpoint", grid_copy / "checkpoints/step-4", "--num", "3", "--out", tmp_path / "s.npy")
    assert str(f) in msg and "unreadable weights" in msg


def test_another_models_weights(grid_copy, mnist_ckpt, tmp_path, capsys):
    g = grid_copy / "checkpoints/step-4/export/G.safetensors"
    shutil.copy(mnist_ckpt / "export/G.safetensors", g)  # a DCGAN generator in an MLP export
    for msg in export_uses(tmp_path, capsys, grid_copy / "checkpoints/step-4/export"):
        assert str(g) in msg and "do not fit this model" in msg


def test_grid_weights_under_an_mnist_config(grid_copy, mnist_ckpt, tmp_path, capsys):
    exp = grid_copy / "checkpoints/step-4/export"
    for name in ("config.yaml", "meta.json"):
        shutil.copy(mnist_ckpt / "export" / name, exp / name)
    for msg in export_uses(tmp_path, capsys, exp):
        assert "G.safetensors" in msg and "do not fit this model" in msg


def test_mnist_weights_under_a_grid_config(grid_copy, mnist_ckpt, tmp_path, capsys):
    exp = tmp_path / "export"
    shutil.copytree(mnist_ckpt / "export", exp)
    for name in ("config.yaml", "meta.json"):
        shutil.copy(grid_copy / "checkpoints/step-4/export" / name, exp / name)
    msg = cli(capsys, "sample", "--checkpoint", exp, "--num", "3", "--out", tmp_path / "s.npy")
    assert "do not fit this model" in msg


def test_config_and_meta_from_different_runs(grid_copy, mnist_ckpt, tmp_path, capsys):
    exp = grid_copy / "checkpoints/step-4/export"
    shutil.copy(mnist_ckpt / "export/config.yaml", exp / "config.yaml")
    for msg in export_uses(tmp_path, capsys, exp):
        assert "meta.json" in msg and "sample_shape" in msg


@pytest.mark.parametrize("meta,expect", [("[1, 2]", "not a JSON object"), ("{", "unreadable export"),
                                         ('{"step": "4", "sample_shape": [2]}', "step is '4'")])
def test_malformed_meta(grid_copy, tmp_path, capsys, meta, expect):
    (grid_copy / "checkpoints/step-4/export/meta.json").write_text(meta)
    for msg in export_uses(tmp_path, capsys, grid_copy / "checkpoints/step-4"):
        assert expect in msg


@pytest.mark.parametrize("text,expect", [("model: {varient: dali}\n", "did you mean 'variant'"),
                                         ("- a list\n", "must be a mapping"), ("model: [\n", "unreadable export")])
def test_malformed_export_config(grid_copy, tmp_path, capsys, text, expect):
    (grid_copy / "checkpoints/step-4/export/config.yaml").write_text(text)
    msg = cli(capsys, "sample", "--checkpoint", grid_copy / "checkpoints/step-4", "--num", "3", "--out", tmp_path / "s.npy")
    assert expect in msg


# ------------------------------------------------------------------------------------------ train --resume


class _RunsCode:
    """Unpickling this would create the marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_optimizer_pickle_that_would_run_code_is_refused(grid_copy, tmp_path, capsys, how):
    marker = tmp_path / "PWNED"
    f = grid_copy / "checkpoints/step-4/optim_d.pt"
    payload = {"state": {}, "param_groups": [], "evil": _RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, f)
    else:
        import pickle

        f.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    msg = cli(capsys, *train_args(grid_copy, "--resume", grid_copy / "checkpoints/step-4", "--set", "train.steps=6"))
    assert str(f) in msg and "refused" in msg
    assert not marker.exists()
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))  # the newest is step-4
    assert str(f) in msg and not marker.exists()


def test_truncated_optimizer_state(grid_copy, capsys):
    f = grid_copy / "checkpoints/step-4/optim_ge.pt"
    f.write_bytes(f.read_bytes()[:200])
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    assert str(f) in msg and "unreadable optimizer state" in msg


def test_optimizer_state_of_another_model(grid_copy, mnist_ckpt, capsys):
    f = grid_copy / "checkpoints/step-4/optim_d.pt"
    shutil.copy(mnist_ckpt / "optim_d.pt", f)
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    assert str(f) in msg and "does not fit" in msg


@pytest.mark.parametrize("name,key,shape", [("d", "exp_avg", (3, 2)), ("ge", "exp_avg_sq", (7,)), ("d", "exp_avg", ())])
def test_optimizer_state_with_wrong_shapes(grid_copy, capsys, name, key, shape):
    """Same number of parameters, one moment of the wrong shape: refused on load, naming the
    file, not at the first step (or never, where it would broadcast)."""
    f = grid_copy / f"checkpoints/step-4/optim_{name}.pt"
    sd = torch.load(f, weights_only=True)
    sd["state"][1][key] = torch.zeros(shape)
    torch.save(sd, f)
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    assert str(f) in msg and "does not fit" in msg and f"{key} is {shape}" in msg
    assert not (grid_copy / "checkpoints/step-6").exists()


def test_truncated_training_weights(grid_copy, capsys):
    f = grid_copy / "checkpoints/step-4/E.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    assert str(f) in msg and "unreadable weights" in msg


@pytest.mark.parametrize("text,expect", [
    ("{", "invalid train state"), ("[4, 8]", "not a JSON object"), ('{"step": "4"}', "step is '4'"),
    ('{"step": 4, "batches_consumed": -1}', "batches_consumed is -1"), ('{"step": 4, "epoch": 1}', "epoch"),
    ('{"step": true}', "step is True"), ("", "invalid train state"),
    ('"abc"', "not a JSON object"), ("3", "not a JSON object"), ('{"step": "abc"}', "step is 'abc'"),
    ('{"step": 4, "world_size": "x"}', "world_size is 'x'"), ('{"step": 4, "elapsed_s": NaN}', "elapsed_s is nan"),
    ('{"step": 4, "phases": [1]}', "phases is [1]"), ('{"step": 4, "phases": {"d": 5}}', "phases.d is 5"),
    ('{"step": 4, "phases": {"d": {"scale": "x"}}}', "phases.d.scale is 'x'"),
])
def test_malformed_train_state(grid_copy, capsys, text, expect):
    f = grid_copy / "checkpoints/step-4/train_state.json"
    f.write_text(text)
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    assert str(f) in msg and expect in msg


@pytest.mark.parametrize("text,expect", [
    ("- a\n- b\n", "top level must be a mapping"), ("abc\n", "top level must be a mapping"),
    ("3\n", "top level must be a mapping"), ("", "is empty"), ("model: [\n", "not valid YAML"),
    ("train: {steps: abc}\n", "train.steps must be an integer"), (b"\xff\xfe\x00junk", "cannot read"),
])
def test_malformed_saved_run_config(grid_copy, capsys, text, expect):
    """RUN_DIR/config.yaml is compared with the new config on resume: a damaged one is one line
    naming it, and it is not rewritten."""
    f = grid_copy / "config.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = f.read_bytes()
    msg = cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    assert str(f) in msg and expect in msg
    assert f.read_bytes() == before


def test_grid_checkpoint_resumed_under_an_mnist_config(grid_run, tmp_path, capsys):
    msg = cli(capsys, "train", "--config", "mnist", "--data", tmp_path / "unused", "--run-dir", tmp_path / "new",
              "--set", "model.width=8", "--set", "tracking.enabled=false", "--resume", grid_run / "checkpoints/step-4")
    assert "step-4/G.safetensors" in msg and "do not fit this model" in msg


def test_mnist_checkpoint_resumed_under_a_grid_config(mnist_ckpt, tmp_path, capsys):
    msg = cli(capsys, *train_args(tmp_path / "new", "--resume", mnist_ckpt))
    assert "G.safetensors" in msg and "do not fit this model" in msg


def test_the_previous_checkpoint_is_untouched_by_a_failed_resume(grid_copy, capsys):
    """Nothing in RUN_DIR changes, config.yaml included, though train.steps (a field a resume
    may change) differs: the config is saved only once the checkpoint has loaded."""
    before = {p: p.read_bytes() for p in grid_copy.rglob("*") if p.is_file()}
    (grid_copy / "checkpoints/step-4/train_state.json").write_text("{")
    cli(capsys, *train_args(grid_copy, "--resume", "auto", "--set", "train.steps=6"))
    after = {p: p.read_bytes() for p in grid_copy.rglob("*") if p.is_file()}
    changed = [p.name for p in before if before[p] != after.get(p)]
    assert changed == ["train_state.json"] and set(after) == set(before)


def test_a_failed_resume_into_a_new_run_dir_leaves_nothing(mnist_ckpt, tmp_path, capsys):
    """--resume CKPT --run-dir NEW with a checkpoint that does not fit: NEW is not created."""
    new = tmp_path / "new"
    cli(capsys, *train_args(new, "--resume", mnist_ckpt))
    assert not new.exists()


def test_export_config_is_yaml_safe_loaded(grid_copy, tmp_path, capsys):
    """A YAML tag that would build a Python object is a parse error, never an object."""
    marker = tmp_path / "PWNED"
    (grid_copy / "checkpoints/step-4/export/config.yaml").write_text(
        f"model: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    msg = cli(capsys, "sample", "--checkpoint", grid_copy / "checkpoints/step-4", "--num", "3", "--out", tmp_path / "s.npy")
    assert "unreadable export" in msg and not marker.exists()



# ------------------------------------------------------------------------------------------ saved sources


@pytest.mark.parametrize("source", ["pipe:touch {marker}", "/data/a.tar::pipe:touch {marker}",
                                    "PIPE:touch {marker}", "shard-{{000..001}}.tar::pipe:touch {marker}"])
def test_a_saved_command_source_is_never_executed(mnist_ckpt, tmp_path, capsys, source):
    """A shared checkpoint whose export/config.yaml names a pipe: source must not run it: every
    command that would read the training data refuses in one line and asks for --data."""
    import yaml

    export = tmp_path / "ckpt"
    shutil.copytree(mnist_ckpt, export)
    marker = tmp_path / "ran"
    cfg_path = export / "export" / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw["data"]["source"] = source.format(marker=marker)
    cfg_path.write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in tmp_path.iterdir())
    msgs = [
        cli(capsys, "encode", "--checkpoint", export, "--out", tmp_path / "z.npz"),
        cli(capsys, "reconstruct", "--checkpoint", export, "--out", tmp_path / "recon"),
        cli(capsys, "interpolate", "--checkpoint", export, "--out", tmp_path / "interp"),
        cli(capsys, "evaluate", "--checkpoint", export, "--metrics", "mse", "--no-track", "--no-progress"),
    ]
    for msg in msgs:
        assert "never executed" in msg and "--data" in msg, msg
        assert "touch" not in msg  # the command itself is not echoed (it may hold secrets)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
