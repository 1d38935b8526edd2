"""A table of hostile or careless inputs, one per row: every command must end with exit code 2,
exactly one `error:` line, no traceback, and the folder it ran in exactly as it was.
New commands and new input classes join the table."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(120)

TINY = ["--config", "grid2d", "--set", "train.steps=2", "--set", "tracking.enabled=false",
        "--set", "train.sample_every=0"]

TRACK = [*TINY, "--set", "tracking.enabled=true"]


def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


def _setup(tmp_path):
    (tmp_path / "afile").write_text("a user's file")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    (tmp_path / "data" / "train").mkdir()
    (tmp_path / "data" / "train" / "mine.tar").write_bytes(b"not prep's")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 1200 + "]" * 1200 + "\n")
    for name, (total, counts, extra) in BAD_MANIFESTS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(_manifest(total, counts, **extra))
    for name, text in BAD_JSON.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
    import sqlite3

    con = sqlite3.connect(tmp_path / "foreign.db")  # somebody's database, not an MLflow store
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "mlflow.db").write_text("not a database")  # where a run's default store goes
    (tmp_path / "oddrun").mkdir()
    (tmp_path / "oddrun" / "checkpoints").write_text("a file where the run keeps its checkpoints")


def _manifest(total, counts, **extra) -> str:
    """A prep manifest of an MNIST-like train split, with counts (and fields) as given."""
    shards = [{"name": f"train/shard-{i:06d}.tar", "count": c} for i, c in enumerate(counts)]
    m = {"format": "dali-dist-shards", "format_version": 1, "dataset": "mnist", "kind": "image",
         "resolution": 28, "channels": 1, "encoding": "png", "num_classes": 10,
         "splits": {"train": {"count": total, "shards": shards}}, **extra}
    return json.dumps(m)


# manifests that are valid JSON with counts (or fields) that cannot be, and one whose train
# split is empty: (split count, shard counts, other fields)
BAD_MANIFESTS = {
    "m-negative": (20, [-5, 25], {}),
    "m-sum": (50, [20, 20], {}),
    "m-type": ("40", [20, 20], {}),
    "m-bool": (21, [20, True], {}),
    "m-channels": (40, [20, 20], {"channels": True}),
    "m-float": (40, [20.0, 20], {}),
    "m-empty": (0, [], {}),
}
# manifests that Python's json module refuses with other errors than JSONDecodeError
BAD_JSON = {"m-digits": '{"format": ' + "9" * 5000 + "}", "m-deep": "[" * 100000}


CASES = {
    # run directories and outputs that cannot be
    "run dir is a file": (["train", *TINY, "--run-dir", "afile"], "not a directory"),
    "run dir under a file": (["train", *TINY, "--run-dir", "afile/run"], "afile"),
    "run dir's checkpoints is a file": (["train", *TINY, "--run-dir", "oddrun"], "oddrun/checkpoints: exists and is not"),
    "output under a file": (["encode", "--checkpoint", "nope", "--out", "afile/z.npz"], "afile is a file"),
    "output is a folder": (["evaluate", "--checkpoint", "nope", "--out", "data"], "is a folder"),
    "output is a user's file": (["encode", "--checkpoint", "nope", "--out", "data/notes.txt"], "--overwrite"),
    # numbers that overflow, sizes with no upper bound
    "huge seed": (["train", *TINY, "--run-dir", "r", "--set", "train.seed=100000000000000000000000"], "64 bits"),
    "huge timeout": (["train", *TINY, "--run-dir", "r", "--set", "train.dist_timeout_s=99999999999"], "at most"),
    "infinite interval": (["train", *TINY, "--run-dir", "r", "--set", "train.log_every=.inf"], "integer"),
    "huge latent": (["train", *TINY, "--run-dir", "r", "--set", "model.latent_dim=100000000"], "at most"),
    "huge layer": (["train", *TINY, "--run-dir", "r", "--set", "model.g_hidden=[100000]"], "at most"),
    "huge image width": (["train", "--config", "mnist", "--data", "data", "--run-dir", "r",
                          "--set", "model.d_head_width=100000"], "d_head_width"),
    "zero head width": (["train", "--config", "mnist", "--data", "data", "--run-dir", "r",
                         "--set", "model.d_head_width=0"], "d_head_width"),
    "allocator failure": (["train", *TINY, "--run-dir", "r", "--set", "train.batch_size=1000000",
                           "--set", "model.g_hidden=[16000,16000]"], "out of memory", "r"),
    # config files that recurse
    "deeply nested config": (["train", "--config", "deep.yaml", "--run-dir", "r"], "deep.yaml"),
    "deeply nested override": (["train", *TINY, "--run-dir", "r", "--set", "model.g_hidden=" + "[" * 1200 + "]" * 1200],
                               "nested"),
    # prep into a folder holding someone else's files
    "prep over user files": (["prep", "grid2d", "--out", "data", "--num-train", "10", "--num-test", "5"], "did not write"),
    # option values Typer checks itself
    "option range": (["sample", "--run-dir", "r", "--num", "0", "--out", "s.npy"], "--num"),
    "unknown option": (["evaluate", "--nope"], "No such option"),
    "nothing to load": (["encode", "--out", "z.npz"], "exactly one of --checkpoint or --run-dir"),
    "two things to load": (["reconstruct", "--checkpoint", "a", "--run-dir", "b", "--out", "o"], "exactly one of"),
    # credentials in a data URL never reach the terminal (an unreachable server: nothing is fetched)
    "unreachable URL with a password": (["train", "--config", "mnist", "--set", "tracking.enabled=false", "--run-dir", "r",
                                         "--data", "http://alice:hunter22@127.0.0.1:9/shards/"], "http://***@127.0.0.1:9", "r"),
    # data and prep (harden-data)
    "verify negative count": (["prep", "verify", "m-negative", "--quiet"],
                              "m-negative/manifest.json: split 'train': shard 'train/shard-000000.tar' has count -5"),
    "verify counts do not add up": (["prep", "verify", "m-sum", "--quiet"],
                                    "m-sum/manifest.json: split 'train': shard counts add up to 40, not 50"),
    "verify count is a string": (["prep", "verify", "m-type", "--quiet"], "m-type/manifest.json: split 'train' needs 'count'"),
    "verify count is a boolean": (["prep", "verify", "m-bool", "--quiet"],
                                  "m-bool/manifest.json: split 'train': shard 'train/shard-000001.tar' has count True"),
    "verify count is a float": (["prep", "verify", "m-float", "--quiet"], "m-float/manifest.json"),
    "verify channels is a boolean": (["prep", "verify", "m-channels", "--quiet"], "m-channels/manifest.json: channels True"),
    "verify 5000-digit number": (["prep", "verify", "m-digits", "--quiet"], "m-digits/manifest.json: not valid JSON"),
    "verify deeply nested manifest": (["prep", "verify", "m-deep", "--quiet"], "m-deep/manifest.json: not valid JSON"),
    "train negative count": (["train", "--config", "mnist", "--data", "m-negative", "--run-dir", "r"],
                             "m-negative/manifest.json: split 'train': shard 'train/shard-000000.tar' has count -5", "r"),
    "train counts do not add up": (["train", "--config", "mnist", "--data", "m-sum", "--run-dir", "r"],
                                   "m-sum/manifest.json: split 'train': shard counts add up", "r"),
    "train on an empty split": (["train", "--config", "mnist", "--data", "m-empty", "--run-dir", "r"],
                                "m-empty/manifest.json: split 'train' has no samples", "r"),
    "classifier count is a boolean": (["train-classifier", "--data", "m-bool", "--out", "c.safetensors"],
                                      "m-bool/manifest.json", "c.safetensors"),
    # runs, checkpoints and tracking (harden-runs)
    "tracking uri scheme": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=foo://x"], "unsupported scheme"),
    "tracking uri no host": (["train", *TRACK, "--run-dir", "r", "--tracking-uri", "http://"], "no host"),
    "tracking uri bad port": (["train", *TRACK, "--run-dir", "r", "--tracking-uri", "http://h:x"], "not a valid URI"),
    "tracking uri garbage": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=gar bage"], "not a tracking URI"),
    "tracking uri in memory": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=sqlite://"], "sqlite:///PATH"),
    "tracking sqlite dir": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=sqlite:///data"], "is a directory"),
    "tracking sqlite text": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=sqlite:///afile"], "not an SQLite"),
    "tracking sqlite foreign": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=sqlite:///foreign.db"],
                                "not an MLflow store"),
    "tracking sqlite no folder": (["train", *TRACK, "--run-dir", "r", "--set", "tracking.uri=sqlite:///nope/m.db"],
                                  "not a directory"),
    "default store is a text file": (["train", *TRACK, "--run-dir", "store/r"], "not an SQLite"),
    "compare a text file": (["runs", "compare", "--tracking-uri", "sqlite:///afile"], "not an SQLite"),
    "compare a foreign sqlite": (["runs", "compare", "--tracking-uri", "sqlite:///foreign.db"], "not an MLflow store"),
    "compare a directory": (["runs", "compare", "--tracking-uri", "sqlite:///data"], "is a directory"),
    "compare a junk folder": (["runs", "compare", "--tracking-uri", "data"], "not a tracking URI"),
    "compare nothing there": (["runs", "compare", "--tracking-uri", "sqlite:///none.db"], "no tracking store"),
    "sample on no such device": (["sample", "--run-dir", "r", "--num", "2", "--out", "s.npy", "--device", "banana"],
                                 "not a device"),
    "sample on a missing gpu": (["sample", "--run-dir", "r", "--num", "2", "--out", "s.npy", "--device", "cuda:99"],
                                "--device 'cuda:99'"),
    "evaluate on no such device": (["evaluate", "--run-dir", "r", "--device", "banana"], "not a device"),
    "evaluate on a meta device": (["evaluate", "--run-dir", "r", "--device", "meta"], "not supported"),
    "encode on no such device": (["encode", "--checkpoint", "r", "--out", "z.npz", "--device", "banana"], "not a device"),
    "reconstruct on a missing gpu": (["reconstruct", "--checkpoint", "r", "--out", "o", "--device", "cuda:99"],
                                     "--device 'cuda:99'"),
    "interpolate on no such device": (["interpolate", "--checkpoint", "r", "--out", "o", "--device", "gpu"],
                                      "not a device"),
    **({"sample on cuda without a gpu": (["sample", "--run-dir", "r", "--num", "2", "--out", "s.npy", "--device", "cuda"],
                                         "no cuda device")} if not torch.cuda.is_available() else {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_line_and_touches_nothing(name, tmp_path):
    """A third element names the command's own output (a run directory it made before the
    failure); nothing else may appear, and nothing that was there may change."""
    args, expect, *own = CASES[name]
    _setup(tmp_path)
    before = _snapshot(tmp_path)
    r = run_cli(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, (r.returncode, r.stderr[-3000:])
    assert not [ln for ln in r.stderr.splitlines() if "Warning" in ln], r.stderr[-3000:]  # no library noise
    assert "hunter22" not in r.stderr + r.stdout  # no secret from any input is echoed
    assert expect in errors[0], errors[0]
    after = {k: v for k, v in _snapshot(tmp_path).items() if not any(k == o or k.startswith(o + "/") for o in own)}
    assert after == before
