"""Inferred codes mu(x) of a whole split, split across ranks and gathered in sample order."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Exported
from ..models import encode
from .ranks import Ranks


@torch.no_grad()
def split_codes(exp: Exported, source, split: str, *, batch_size: int, ranks: Ranks, total: int | None = None,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N, d) float32, labels (N,) int64) of every sample of ``split``, on every rank."""
    from ..data import eval_batches

    device = next(exp.G.parameters()).device
    codes, labels = [], []
    bar = tqdm(total=(total // ranks.world) if total else None, desc=f"encode ({split})", unit="img",
               disable=not (progress and ranks.is_main))
    for x, y, _ in eval_batches(source, split=split, batch_size=batch_size, rank=ranks.rank, world_size=ranks.world):
        mu, _ = encode(exp.cfg, exp.D, exp.E, x.to(device))
        codes.append(mu.float().cpu().numpy())
        labels.append(y.numpy())
        bar.update(len(x))
    bar.close()
    d = exp.cfg.model.latent_dim
    local_codes = np.concatenate(codes) if codes else np.zeros((0, d), np.float32)
    local_labels = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    return ranks.gather_rows(local_codes), ranks.gather_rows(local_labels)
