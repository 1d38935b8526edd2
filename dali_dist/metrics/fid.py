"""FID with clean-fid's protocol, driven by our own loop (DESIGN.md section 2).

    FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))      (cleanfid.fid.frechet_distance)

Generated side: ``num_samples`` images, z of sample i seeded by (eval seed, i), split across
ranks, quantised to uint8 (the ``clean`` protocol), features gathered in sample order.
Reference side: every image of the dataset's train split at the resolution trained at,
computed once and cached beside the shards:

    <shards>/fid_stats/<dataset>-<split>-<res>px-<extractor id>.npz

holding ``mu``, ``sigma`` (float64), ``count`` and the manifest sha256 of the shards it came
from (a cache from other shards is recomputed, never reused). Remote or read-only shards
cache under ``~/.cache/dali-dist/fid_stats/<manifest sha256[:16]>/`` instead. Never written
into site-packages.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from .extractors import cleanfid_modules


@dataclass
class GaussianStats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Mean and (unbiased) covariance of feature rows, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise UserError(f"FID needs at least 2 samples, got {len(f)}")
    return GaussianStats(f.mean(axis=0), np.cov(f, rowvar=False), len(f))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    fd, _ = cleanfid_modules()
    if a.mu.shape != b.mu.shape:
        raise UserError(f"feature sizes differ ({a.mu.shape[0]} vs {b.mu.shape[0]}): statistics of different extractors")
    return float(np.real(fd(a.mu, a.sigma, b.mu, b.sigma)))


# ------------------------------------------------------------------------------------------
# The reference-statistics cache

def stats_key(dataset: str, split: str, resolution: int, extractor_id: str) -> str:
    return f"{dataset}-{split}-{resolution}px-{extractor_id}"


def stats_dir(info) -> Path:
    if info.root and os.access(info.root, os.W_OK):
        return Path(info.root) / "fid_stats"
    if info.root and (Path(info.root) / "fid_stats").is_dir():
        return Path(info.root) / "fid_stats"  # a pre-filled, read-only cache beside the shards
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dali-dist" / "fid_stats"
    return cache / (info.manifest_sha256 or "unknown")[:16]


def load_cached(path: Path, manifest_sha256: Optional[str]) -> Optional[GaussianStats]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            stats = GaussianStats(z["mu"], z["sigma"], int(meta["count"]))
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed
        print(f"warning: {path}: unreadable reference statistics ({type(exc).__name__}); recomputing", file=sys.stderr)
        return None
    if manifest_sha256 and meta.get("manifest_sha256") != manifest_sha256:
        print(f"warning: {path}: computed from other shards (manifest differs); recomputing", file=sys.stderr)
        return None
    return stats


def save_cached(path: Path, stats: GaussianStats, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, meta=np.array(json.dumps({**meta, "count": stats.count})))
    os.replace(tmp, path)
