"""The options every source command of ``dali-dist prep`` shares, defined once (typer takes the
same OptionInfo as the default of several commands)."""

from __future__ import annotations

import os

import typer


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


OUT = typer.Option(..., "--out", help="Output shard directory.")
ENCODING = typer.Option("png", "--encoding", help="png (lossless, small) or raw (binary PGM/PPM: uncompressed uint8, fastest to decode).")
SHARD_SIZE = typer.Option(5000, "--shard-size", help="Samples per shard.")
WORKERS = typer.Option(default_workers(), "--workers", help="Processes decoding and encoding images.")
FORCE = typer.Option(False, "--force", help="Rebuild every shard.")
MAX_CORRUPT = typer.Option(100, "--max-corrupt", help="Fail when more inputs than this are corrupt or missing.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")
