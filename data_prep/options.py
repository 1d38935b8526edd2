"""The options every source command of ``dali-dist prep`` shares, defined once (typer takes the
same OptionInfo as the default of several commands)."""

from __future__ import annotations

import inspect
import os
import typing
from pathlib import Path
from typing import Callable

import typer

from .shards import build


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


OUT = typer.Option(..., "--out", help="Output shard directory.")
ENCODING = typer.Option("png", "--encoding", help="png (lossless, small) or raw (binary PGM/PPM: uncompressed uint8, fastest to decode).")
SHARD_SIZE = typer.Option(5000, "--shard-size", help="Samples per shard.")
WORKERS = typer.Option(default_workers(), "--workers", help="Processes decoding and encoding images.")
FORCE = typer.Option(False, "--force", help="Rebuild every shard.")
MAX_CORRUPT = typer.Option(100, "--max-corrupt", help="Fail when more inputs than this are corrupt or missing.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")

# (name, option, type) of the options every image source shares, in the order --help lists them
SHARED = [("out", OUT, Path), ("encoding", ENCODING, str), ("shard_size", SHARD_SIZE, int), ("workers", WORKERS, int),
          ("force", FORCE, bool), ("max_corrupt", MAX_CORRUPT, int), ("quiet", QUIET, bool)]


def image_command(make_source: Callable) -> Callable:
    """A ``prep`` command from a source's builder: its own options are the parameters of
    ``make_source`` (which returns the Source to shard; a ``progress`` parameter, if any, gets
    ``not --quiet``), followed by the options every image source shares. One place builds the
    shards, so the four image commands do not repeat the block."""
    hints = typing.get_type_hints(make_source)
    own = [p.replace(annotation=hints.get(p.name, p.annotation))
           for p in inspect.signature(make_source).parameters.values() if p.name != "progress"]
    wants_progress = "progress" in inspect.signature(make_source).parameters
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ)
              for name, opt, typ in SHARED]

    def command(**kwargs) -> None:
        common = {name: kwargs.pop(name) for name, _, _ in SHARED}
        src = make_source(**kwargs, **({"progress": not common["quiet"]} if wants_progress else {}))
        build(src, common["out"], shard_size=common["shard_size"], workers=common["workers"],
              encoding=common["encoding"], force=common["force"], max_corrupt=common["max_corrupt"],
              progress=not common["quiet"])

    command.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared,
                                              return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    command.__doc__, command.__name__ = make_source.__doc__, make_source.__name__
    return command
