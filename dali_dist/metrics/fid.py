"""FID with clean-fid's protocol, driven by our own loop (docs/design.md, 'Metric protocols').

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

from ..atomic import atomic_path
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


def kernel_distance(generated: np.ndarray, reference: np.ndarray, seed: int) -> float:
    """KID (Binkowski et al. 2018) with clean-fid's own estimator (cubic polynomial kernel, the
    unbiased MMD^2 averaged over 100 subsets of up to 1,000 rows). clean-fid draws the subsets
    from numpy's global generator; it is seeded here and restored after, so that a KID is
    repeatable for the same features."""
    from cleanfid.fid import kernel_distance as cleanfid_kid

    g, r = np.asarray(generated, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise UserError(f"KID needs feature rows of one size, got {g.shape} and {r.shape}")
    if min(len(g), len(r)) < 2:
        raise UserError(f"KID needs at least 2 samples on each side, got {len(g)} and {len(r)}")
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        return cleanfid_kid(g, r)
    finally:
        np.random.set_state(state)


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


def load_cached_features(path: Path, manifest_sha256: Optional[str]) -> Optional[np.ndarray]:
    """Reference feature rows (for KID) cached beside the statistics, same rules."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            feats = np.asarray(z["features"], dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed
        print(f"warning: {path}: unreadable reference features ({type(exc).__name__}); recomputing", file=sys.stderr)
        return None
    if manifest_sha256 and meta.get("manifest_sha256") != manifest_sha256:
        return None
    return feats


def save_cached_features(path: Path, features: np.ndarray, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=np.asarray(features, dtype=np.float32), meta=np.array(json.dumps(meta)))


def save_cached(path: Path, stats: GaussianStats, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mu=stats.mu, sigma=stats.sigma, meta=np.array(json.dumps({**meta, "count": stats.count})))
