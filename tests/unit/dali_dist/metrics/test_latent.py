"""Linear probe and k-NN accuracy against independent computations."""

from collections import Counter

import numpy as np
import pytest

from dali_dist.metrics.latent import knn_accuracy, linear_probe_accuracy


def brute_knn(train_x, train_y, test_x, test_y, k):
    correct = 0
    for q, yq in zip(test_x, test_y):
        order = np.argsort(np.linalg.norm(train_x - q, axis=1), kind="stable")[:k]
        labels = [int(train_y[i]) for i in order]
        counts = Counter(labels)
        best = max(counts.values())
        pred = next(lab for lab in labels if counts[lab] == best)  # first in distance order
        correct += pred == yq
    return correct / len(test_x)


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    tx, ty = rng.normal(size=(300, 4)), rng.integers(0, 4, 300)
    qx, qy = rng.normal(size=(97, 4)), rng.integers(0, 4, 97)
    assert knn_accuracy(tx, ty, qx, qy, k=k, chunk=10) == pytest.approx(brute_knn(tx, ty, qx, qy, k))


def test_probe_separates_linearly_separable_classes_and_not_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6, size=(5, 8))
    y = rng.integers(0, 5, 1000)
    x = centres[y] + rng.normal(size=(1000, 8))
    assert linear_probe_accuracy(x[:800], y[:800], x[800:], y[800:]) > 0.97
    noise_y = rng.integers(0, 5, 1000)
    assert linear_probe_accuracy(x[:800], noise_y[:800], x[800:], noise_y[800:]) < 0.35


def test_probe_agrees_with_sklearn_when_available():
    sk = pytest.importorskip("sklearn.linear_model", reason="scikit-learn not installed")
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 3))
    x = rng.normal(size=(1500, 6))
    y = (x @ w + rng.gumbel(size=(1500, 3))).argmax(1)
    ref = sk.LogisticRegression(max_iter=2000).fit(x[:1000], y[:1000]).score(x[1000:], y[1000:])
    assert linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:]) == pytest.approx(ref, abs=0.02)
