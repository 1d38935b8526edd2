"""How useful inferred codes are downstream (issue 9): a linear probe and k-NN retrieval.

Both take codes of the train split (fit / database) and of the test split (queries), as the
paper motivates inference by classification and similarity search.
"""

from __future__ import annotations

import numpy as np
import torch


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *, l2: float = 1e-4, max_iter: int = 200) -> float:
    """Multinomial logistic regression on standardised codes (full-batch L-BFGS, L2 penalty),
    fitted on the train codes, scored as test accuracy in [0, 1]."""
    xtr, xte = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (train_x, test_x))
    ytr, yte = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (train_y, test_y))
    xtr, xte = _standardise(xtr, xte)
    classes = int(max(ytr.max(), yte.max())) + 1
    w = torch.zeros(xtr.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == yte).double().mean())


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 5, chunk: int = 1024) -> float:
    """Each test code takes the majority label of its k nearest train codes (Euclidean; ties
    go to the label whose nearest member is closest). Accuracy in [0, 1]."""
    db = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    q_all = torch.as_tensor(np.asarray(test_x), dtype=torch.float32)
    ydb = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    yq = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    k = min(k, len(db))
    classes = int(max(ydb.max(), yq.max())) + 1
    correct = 0
    for i in range(0, len(q_all), chunk):
        q = q_all[i:i + chunk]
        d = torch.cdist(q, db)
        idx = d.topk(k, largest=False).indices  # sorted nearest first
        votes = torch.zeros(len(q), classes)
        votes.scatter_add_(1, ydb[idx], torch.ones(len(q), k))
        # tie-break: among the top-voted labels, the one appearing first in the sorted list
        rank_bonus = torch.zeros(len(q), classes)
        rank_bonus.scatter_reduce_(1, ydb[idx], -torch.arange(k, dtype=torch.float32).expand(len(q), k) / (k + 1),
                                   reduce="amax", include_self=False)
        pred = (votes + rank_bonus).argmax(1)  # absent labels score 0, present ones > 0
        correct += int((pred == yq[i:i + chunk]).sum())
    return correct / len(q_all)
