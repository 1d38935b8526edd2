"""data_prep/options.py: ``image_command`` turns a source builder into a prep command whose
options are the builder's own followed by the shared ones; the command passes ``progress`` as
``not --quiet`` and builds the shards with the shared options."""

from __future__ import annotations

import inspect
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer

from dali_dist.cli_util import exits_cleanly
from data_prep import options
from data_prep.shards import Source

SEEN: list = []


class _Tiny(Source):
    dataset, kind, resolution, channels, num_classes = "tiny", "image", 4, 1, 3

    def __init__(self, n):
        self.n = n

    def source_info(self):
        return {"path": "memory", "sha256": "0" * 64}

    def splits(self):
        return {"train": list(range(self.n)), "test": [0]}

    def load(self, split, i):
        return f"{i:05d}", np.full((4, 4, 1), i, np.uint8), i % 3


def tiny(count: int = typer.Option(5, "--count", help="How many."), progress: bool = True) -> Source:
    """A tiny in-memory source."""
    SEEN.append(progress)
    return _Tiny(count)


def quiet_source(count: int = typer.Option(2, "--count")) -> Source:
    return _Tiny(count)


def _app(*makers):
    app = typer.Typer(add_completion=False)
    for make in makers:
        app.command(make.__name__.replace("_", "-"))(options.image_command(make))
    return app


def _run(app, argv, capsys):
    with pytest.raises(SystemExit) as info:
        exits_cleanly(app)([str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_the_signature_is_the_builders_options_then_the_shared_ones():
    cmd = options.image_command(tiny)
    params = inspect.signature(cmd).parameters
    assert list(params) == ["count", *[name for name, _, _ in options.SHARED]]  # progress is not an option
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert cmd.__annotations__["count"] is int and cmd.__annotations__["out"] is Path  # resolved, not strings
    assert cmd.__doc__ == tiny.__doc__ and cmd.__name__ == "tiny"


def test_the_command_builds_with_the_shared_options(tmp_path, capsys):
    SEEN.clear()
    out = tmp_path / "out"
    code, stdout, _ = _run(_app(tiny), ["--count", 7, "--out", out, "--shard-size", 3, "--encoding", "raw",
                                        "--workers", 1, "--quiet"], capsys)
    assert code == 0 and SEEN == [False]
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"] == "tiny" and m["encoding"] == "raw" and m["options"]["shard_size"] == 3
    assert [s["count"] for s in m["splits"]["train"]["shards"]] == [3, 3, 1] and m["splits"]["test"]["count"] == 1
    with tarfile.open(out / "train" / "shard-000000.tar") as tf:
        assert all(n.endswith((".pgm", ".cls")) for n in tf.getnames())


def test_progress_follows_quiet_and_a_builder_without_progress(tmp_path, capsys):
    SEEN.clear()
    code, _, _ = _run(_app(tiny), ["--out", tmp_path / "a", "--workers", 1], capsys)
    assert code == 0 and SEEN == [True]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["encoding"] == "png"  # the default
    code, _, _ = _run(_app(quiet_source), ["--out", tmp_path / "b", "--quiet", "--workers", 1], capsys)
    assert code == 0 and json.loads((tmp_path / "b" / "manifest.json").read_text())["splits"]["train"]["count"] == 2


def test_help_and_missing_options(capsys, tmp_path):
    code, out, err = _run(_app(tiny), ["--help"], capsys)
    text = out + err
    assert code == 0 and "A tiny in-memory source." in text
    assert [text.index(o) for o in ("--count", "--out", "--encoding", "--shard-size", "--workers", "--force",
                                    "--max-corrupt", "--quiet")] == sorted(
        text.index(o) for o in ("--count", "--out", "--encoding", "--shard-size", "--workers", "--force",
                                "--max-corrupt", "--quiet"))
    assert "--progress" not in text
    code, _, err = _run(_app(tiny), ["--count", 2], capsys)
    assert code == 2 and err.startswith("error: ") and "--out" in err
    code, _, err = _run(_app(tiny), ["--out", tmp_path / "c", "--encoding", "jpeg", "--quiet"], capsys)
    assert code == 2 and err == "error: --encoding must be one of png, raw, got 'jpeg'\n"


def test_default_workers():
    import os

    assert options.default_workers() == max(1, min(8, os.cpu_count() or 1))
