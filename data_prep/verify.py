"""Check a shard directory against its manifest.

    python -m data_prep.verify DIR
    dali-dist prep verify DIR [--quick]

For every shard: it exists, has the recorded size and sha256, and (unless ``--quick``)
parses as a tar holding exactly the recorded number of samples with the expected members.
Exits 0 when all is well, 2 with one line naming the first bad file otherwise (each
problem is also listed on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dali_dist.errors import UserError
from dali_dist.manifest import read_manifest, sha256_file


def verify(root, quick: bool = False, progress: bool = True) -> dict:
    """Return {"shards": n, "samples": n, "problems": [..]}; never raises for bad shards."""
    from tqdm import tqdm

    from dali_dist.data import _records

    root = Path(root)
    m = read_manifest(root)
    problems: list[str] = []
    shards = [(s, sh) for s, v in m["splits"].items() for sh in v["shards"]]
    n_samples = 0
    for split, sh in tqdm(shards, desc=f"verify {root}", unit="shard", file=sys.stderr, disable=not progress):
        p = root / sh["name"]
        if not p.is_file():
            problems.append(f"{p}: missing")
            continue
        if "size" in sh and p.stat().st_size != sh["size"]:
            problems.append(f"{p}: size {p.stat().st_size}, manifest says {sh['size']}")
            continue
        if "sha256" in sh and sha256_file(p) != sh["sha256"]:
            problems.append(f"{p}: sha256 differs from the manifest")
            continue
        if quick:
            n_samples += sh["count"]
            continue
        try:
            n = sum(1 for _ in _records(str(p), m["kind"]))
        except UserError as exc:
            problems.append(str(exc))
            continue
        if n != sh["count"]:
            problems.append(f"{p}: holds {n} samples, manifest says {sh['count']}")
        n_samples += n
    return {"shards": len(shards), "samples": n_samples, "problems": problems}


def command(
    directory: Path = typer.Argument(..., help="Shard directory (holding manifest.json)."),
    quick: bool = typer.Option(False, "--quick", help="Check sizes and sha256 only, do not parse the tars."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Check shards against the manifest (size, sha256, sample counts)."""
    r = verify(directory, quick=quick, progress=not quiet)
    for p in r["problems"]:
        print(f"problem: {p}", file=sys.stderr)
    if r["problems"]:
        raise UserError(f"{len(r['problems'])} of {r['shards']} shard(s) failed verification; first: {r['problems'][0]}")
    typer.echo(f"{directory}: {r['shards']} shards, {r['samples']} samples, all match the manifest")


def main() -> None:
    from .cli import run_single

    run_single(command)


if __name__ == "__main__":
    main()
