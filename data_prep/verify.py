"""Check a shard directory against its manifest.

    python -m data_prep.verify DIR
    dali-dist prep verify DIR [--quick]

For every shard: it exists, has the recorded size and sha256, and (unless ``--quick``)
parses as a tar holding exactly the recorded number of samples with the expected members,
each image of the recorded file type, resolution and channels, each label within the
recorded classes.
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
            n = _check_records(str(p), m)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if n != sh["count"]:
            problems.append(f"{p}: holds {n} samples, manifest says {sh['count']}")
        n_samples += n
    return {"shards": len(shards), "samples": n_samples, "problems": problems}


def _check_records(url: str, m: dict) -> int:
    """The number of samples in a shard, each checked against the manifest's description
    (image file type, resolution and channels, label range); raises at the first that differs."""
    from dali_dist.shard_reader import read_records

    n = 0
    for key, payload, label in read_records(url, m["kind"]):
        if m["kind"] == "image":
            _check_image(url, key, payload, m)
        _check_label(url, key, label, m.get("num_classes"))
        n += 1
    return n


def _check_image(url: str, key: str, payload: tuple, m: dict) -> None:
    from dali_dist.data import decode_image

    ext, data = payload
    want = "png" if m["encoding"] == "png" else ("pgm" if m["channels"] == 1 else "ppm")
    if ext != want:
        raise UserError(f"{url}: sample {key} is .{ext}, the manifest says {m['encoding']} with "
                        f"{m['channels']} channel(s) (.{want})")
    res = m["resolution"]
    arr = decode_image(ext, data, url, key, expect=(res, res))  # refuses other sizes before decoding
    if arr.shape[2] != m["channels"]:
        raise UserError(f"{url}: sample {key} has {arr.shape[2]} channel(s), the manifest says {m['channels']}")


def _check_label(url: str, key: str, label: int, num_classes) -> None:
    if num_classes is None and label != -1:
        raise UserError(f"{url}: sample {key} has label {label}, the manifest says the data has no labels")
    if num_classes is not None and not 0 <= label < num_classes:
        raise UserError(f"{url}: sample {key} has label {label}, outside the manifest's {num_classes} classes")


def command(
    directory: Path = typer.Argument(..., help="Shard directory (holding manifest.json)."),
    quick: bool = typer.Option(False, "--quick", help="Check sizes and sha256 only, do not parse the tars."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Check shards against the manifest (size, sha256, sample counts, image shape, labels)."""
    r = verify(directory, quick=quick, progress=not quiet)
    for p in r["problems"]:
        print(f"problem: {p}", file=sys.stderr)
    if r["problems"]:
        raise UserError(f"{len(r['problems'])} of {r['shards']} shard(s) failed verification; first: {r['problems'][0]}")
    typer.echo(f"{directory}: {r['shards']} shards, {r['samples']} samples, all match the manifest")


def main() -> None:
    from dali_dist.cli_util import run_single

    run_single(command)


if __name__ == "__main__":
    main()
