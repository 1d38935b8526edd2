"""The loops that feed images to feature extractors: generated samples (z seeded per sample,
split across ranks) and dataset splits (read from the shards, split across ranks). Results
are gathered in sample order, so 1 and N processes see the same rows."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Exported
from ..generate import per_sample_latents
from ..visualize import to_uint8_images
from .extractors import FeatureExtractor
from .ranks import Ranks

Rows = dict[str, tuple[np.ndarray, Optional[np.ndarray]]]


def _run(extractors: dict[str, FeatureExtractor], u8: np.ndarray, out: dict) -> None:
    for name, ext in extractors.items():
        feats, logits = ext(ext.preprocess(u8).to(ext.device))
        out[name][0].append(feats.cpu().numpy().astype(np.float32))
        if logits is not None:
            out[name][1].append(logits.cpu().numpy().astype(np.float32))


def _gather(extractors, out, ranks: Ranks, dims: dict) -> Rows:
    rows: Rows = {}
    for name in extractors:
        f, l = out[name]
        feats = np.concatenate(f) if f else np.zeros((0, dims.get(name, (0, 0))[0]), np.float32)
        logits = np.concatenate(l) if l else None
        feats = ranks.gather_rows(feats)
        if extractors[name].has_logits:
            logits = ranks.gather_rows(logits if logits is not None else np.zeros((0, dims.get(name, (0, 0))[1]), np.float32))
        rows[name] = (feats, logits)
    return rows


def _dims(extractors, probe: np.ndarray) -> dict:
    """Feature and logit sizes (for ranks that own no samples, so they can join the gather)."""
    dims = {}
    for name, ext in extractors.items():
        f, l = ext(ext.preprocess(probe).to(ext.device))
        dims[name] = (f.shape[1], l.shape[1] if l is not None else 0)
    return dims


@torch.no_grad()
def generated_features(exp: Exported, extractors: dict[str, FeatureExtractor], n: int, *, seed: int,
                       batch_size: int, ranks: Ranks, progress: bool = True) -> Rows:
    """Features of generated samples 0..n-1 (uint8-quantised images), on every rank."""
    device = next(exp.G.parameters()).device
    mine = ranks.share(n)
    out = {name: ([], []) for name in extractors}
    bar = tqdm(total=len(mine), desc=f"generated features ({ranks.world} rank(s))", unit="img",
               disable=not (progress and ranks.is_main), dynamic_ncols=True)
    for start in range(mine.start, mine.stop, batch_size):
        stop = min(start + batch_size, mine.stop)
        z = per_sample_latents(range(start, stop), exp.cfg.model.latent_dim, seed).to(device)
        _run(extractors, to_uint8_images(exp.G(z)), out)
        bar.update(stop - start)
    bar.close()
    dims = {} if len(mine) else _dims(extractors, to_uint8_images(exp.G(per_sample_latents([0], exp.cfg.model.latent_dim, seed).to(device))))
    return _gather(extractors, out, ranks, dims)


@torch.no_grad()
def dataset_features(source, split: str, extractors: dict[str, FeatureExtractor], *, batch_size: int,
                     ranks: Ranks, progress: bool = True, total: Optional[int] = None) -> Rows:
    """Features of every image of ``split`` in manifest order, on every rank."""
    from ..data import eval_batches

    out = {name: ([], []) for name in extractors}
    probe = None
    bar = tqdm(total=(total // ranks.world) if total else None, desc=f"{split} features ({ranks.world} rank(s))",
               unit="img", disable=not (progress and ranks.is_main), dynamic_ncols=True)
    for x, _, _ in eval_batches(source, split=split, batch_size=batch_size, rank=ranks.rank,
                                world_size=ranks.world, as_uint8=True):
        u8 = x.permute(0, 2, 3, 1).numpy()
        _run(extractors, u8, out)
        probe = u8[:1]
        bar.update(len(u8))
    bar.close()
    dims = {}
    if probe is None:  # this rank owned no samples; learn the sizes from one image of the split
        x, _, _ = next(iter(eval_batches(source, split=split, batch_size=1, as_uint8=True)))
        dims = _dims(extractors, x.permute(0, 2, 3, 1).numpy())
    return _gather(extractors, out, ranks, dims)
