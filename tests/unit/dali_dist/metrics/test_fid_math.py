"""FID and Inception-score maths against independent computations (closed forms, a plain
re-implementation of the original Inception-score loop)."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dali_dist.metrics.fid import GaussianStats, gaussian_stats
from dali_dist.metrics.inception import inception_score

from tests._eval_kit import cleanfid_or_skip


pytestmark = pytest.mark.timeout(60)


def _rotation(d: int, rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_frechet_of_two_gaussians_matches_the_closed_form():
    cleanfid_or_skip()
    from dali_dist.metrics.fid import frechet_distance

    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    # diagonal covariances commute: Tr((S1 S2)^1/2) = sum sqrt(v1 v2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    R = _rotation(d, rng)  # FID is invariant under a common rotation: test a full covariance too
    a = GaussianStats(R @ mu1, R @ np.diag(v1) @ R.T, 10)
    b = GaussianStats(R @ mu2, R @ np.diag(v2) @ R.T, 10)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # isotropic 2-d: ||m1 - m2||^2 + 2 (s1 - s2)^2 (1-d input trips clean-fid's sqrtm call on scipy 1.17)
    assert frechet_distance(GaussianStats(np.array([1.0, 0.0]), 4.0 * np.eye(2), 2),
                            GaussianStats(np.array([-2.0, 0.0]), 9.0 * np.eye(2), 2)) == pytest.approx(9 + 2)


def test_frechet_of_a_set_with_itself_is_zero_and_samples_converge():
    cleanfid_or_skip()
    from dali_dist.metrics.fid import frechet_distance

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 6)) * [1, 2, 0.5, 1, 1, 3] + [0, 1, 0, 0, 2, 0]
    assert abs(frechet_distance(gaussian_stats(x), gaussian_stats(x))) < 1e-8
    y = rng.standard_normal((4000, 6)) * [1, 2, 0.5, 1, 1, 3] + [0.5, 1, 0, 0, 2, 0]
    assert frechet_distance(gaussian_stats(x), gaussian_stats(y)) == pytest.approx(0.25, abs=0.06)


def test_gaussian_stats_are_float64_mean_and_unbiased_cov():
    x = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    s = gaussian_stats(x)
    assert s.mu.dtype == np.float64 and s.count == 50
    np.testing.assert_allclose(s.mu, x.astype(np.float64).mean(0))
    np.testing.assert_allclose(s.sigma, np.cov(x.astype(np.float64).T, ddof=1))


def _reference_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """The original improved-gan loop, in plain numpy."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_on_constructed_logits():
    k = 10
    confident = np.eye(k)[np.arange(1000) % k] * 60.0  # certain and evenly spread: IS = K
    assert inception_score(confident)[0] == pytest.approx(k, rel=1e-6)
    assert inception_score(confident)[1] == pytest.approx(0, abs=1e-6)
    same = np.tile(np.random.default_rng(0).standard_normal(k), (1000, 1))  # one distribution: IS = 1
    assert inception_score(same)[0] == pytest.approx(1.0, abs=1e-12)
    half = np.eye(k)[np.arange(1000) % 5] * 60.0  # 5 of 10 classes: IS = 5
    assert inception_score(half)[0] == pytest.approx(5, rel=1e-6)
    logits = np.random.default_rng(3).standard_normal((997, 7)) * 2
    np.testing.assert_allclose(inception_score(logits), _reference_is(logits, 10), rtol=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(10, 200), st.integers(2, 12), st.floats(0.1, 20))
def test_inception_score_is_between_one_and_the_class_count(n, k, scale):
    logits = np.random.default_rng(n * 31 + k).standard_normal((n, k)) * scale
    mean, std = inception_score(logits)
    assert 1 - 1e-9 <= mean <= k + 1e-9
    assert std <= (k - 1) / 2 + 1e-9  # ten split scores, each in [1, k]
    np.testing.assert_allclose((mean, std), _reference_is(logits, 10), rtol=1e-9, atol=1e-12)
