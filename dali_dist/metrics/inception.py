"""Inception score (Salimans et al. 2016), from logits of any extractor.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),  computed on 10 consecutive splits of the samples;
    reported as the mean and the (population) standard deviation over splits,

exactly as the original ``improved-gan`` code (softmax of the pool-3 logits without bias for
ImageNet Inception; the project's classifier for MNIST-like sets).
"""

from __future__ import annotations

import numpy as np

IS_SPLITS = 10


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"inception score needs (N >= {splits}, K) logits, got shape {logits.shape}")
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # log softmax, stable
    p = np.exp(log_p)
    n = len(p)
    scores = []
    for i in range(splits):
        part_p, part_log = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        log_py = np.log(part_p.mean(axis=0))
        kl = (part_p * (part_log - log_py[None, :])).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
