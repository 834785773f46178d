"""pipeline.evaluate.metrics against closed forms and direct (slow, obvious) implementations."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from pipeline.evaluate import metrics


# ----------------------------------------------------------------------------------------------- FID
def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(6), rng.randn(6)
    s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_general_covariances():
    # commuting full covariances (same eigenvectors): tr sqrt(S1 S2) = sum sqrt(l1 l2)
    rng = np.random.RandomState(1)
    q, _ = np.linalg.qr(rng.randn(5, 5))
    l1, l2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    expected = np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    assert metrics.frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-7)


def test_fid_from_samples_approaches_the_gaussian_value():
    rng = np.random.RandomState(2)
    d, n = 4, 200_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 1.0, 0.5])
    x = mu1 + rng.randn(n, d) * np.sqrt(s1)
    y = mu2 + rng.randn(n, d) * np.sqrt(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert metrics.fid(x, y) == pytest.approx(expected, abs=0.03)
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_feature_statistics_use_unbiased_covariance():
    x = np.random.RandomState(3).randn(7, 3)
    mu, sigma = metrics.feature_statistics(torch.from_numpy(x).float())
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 6, rtol=1e-5)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-5)


def test_fid_singular_covariances_fall_back_to_offset():
    # fewer samples than dimensions: singular covariances, still a finite non-negative number
    rng = np.random.RandomState(4)
    value = metrics.fid(rng.randn(5, 16), rng.randn(6, 16) + 1)
    assert np.isfinite(value) and value > 0


# ----------------------------------------------------------------------------------------------- ISc
def test_inception_score_uniform_is_one():
    out = metrics.inception_score(torch.zeros(100, 309))
    assert out["inception_score_mean"] == pytest.approx(1.0, abs=1e-9)
    assert out["inception_score_std"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("k", [2, 5, 8])
def test_inception_score_one_hot_over_k_classes_is_k(k):
    n = 20 * k * 10  # every split sees each of the k classes equally often when unshuffled
    labels = np.arange(n) % k
    logits = np.full((n, 309), -50.0)  # p ~ 2e-22: one-hot up to float64 (exact 0 gives 0 * log 0 = nan)
    logits[np.arange(n), labels] = 0.0
    out = metrics.inception_score(logits, shuffle=False)
    assert out["inception_score_mean"] == pytest.approx(k, rel=1e-9)
    shuffled = metrics.inception_score(logits)  # shuffled splits are nearly balanced
    assert shuffled["inception_score_mean"] == pytest.approx(k, rel=0.05)


def test_inception_score_matches_direct_loop():
    rng = np.random.RandomState(5)
    logits = rng.randn(53, 7) * 2
    perm = np.random.RandomState(2020).permutation(53)
    x = logits[perm]
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    scores = []
    for i in range(10):
        chunk = p[i * 53 // 10:(i + 1) * 53 // 10]
        q = chunk.mean(0)
        kl = [sum(pi[c] * (np.log(pi[c]) - np.log(q[c])) for c in range(7)) for pi in chunk]
        scores.append(np.exp(np.mean(kl)))
    out = metrics.inception_score(logits)
    assert out["inception_score_mean"] == pytest.approx(np.mean(scores), rel=1e-10)
    assert out["inception_score_std"] == pytest.approx(np.std(scores), rel=1e-8)


# ----------------------------------------------------------------------------------------------- KID
def _kid_loop(f1, f2, subsets, size, seed=2020):
    rng = np.random.RandomState(seed)
    d = f1.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), size, replace=False)]
        y = f2[rng.choice(len(f2), size, replace=False)]
        xx = sum(k(x[i], x[j]) for i in range(size) for j in range(size) if i != j) / (size * (size - 1))
        yy = sum(k(y[i], y[j]) for i in range(size) for j in range(size) if i != j) / (size * (size - 1))
        xy = sum(k(x[i], y[j]) for i in range(size) for j in range(size)) / size ** 2
        values.append(xx + yy - 2 * xy)
    return np.mean(values), np.std(values)


def test_kid_matches_direct_loop():
    rng = np.random.RandomState(6)
    f1, f2 = rng.randn(12, 5), rng.randn(9, 5) + 0.3
    out = metrics.kid(f1, f2, subsets=4)  # subset size min(1000, 12, 9) = 9
    mean, std = _kid_loop(f1, f2, subsets=4, size=9)
    assert out["kernel_inception_distance_mean"] == pytest.approx(mean, rel=1e-9)
    assert out["kernel_inception_distance_std"] == pytest.approx(std, rel=1e-7)


def test_kid_of_identical_sets_is_near_zero_and_shift_is_positive():
    rng = np.random.RandomState(7)
    f = rng.randn(300, 8)
    same = metrics.kid(f, f, subsets=10, subset_size=100)["kernel_inception_distance_mean"]
    shifted = metrics.kid(f, f + 1.0, subsets=10, subset_size=100)["kernel_inception_distance_mean"]
    assert shifted > 1.0 and abs(same) < shifted / 10


# ----------------------------------------------------------------------------------------------- MKL
def test_mkl_matches_direct_loop():
    rng = np.random.RandomState(8)
    real_keys = ["a", "b", "c"]
    real = rng.randn(3, 6)
    fake_keys = ["b", "a", "a", "c", "b"]
    fake = rng.randn(5, 6)
    softmax = lambda v: np.exp(v) / np.exp(v).sum()
    total = 0.0
    for key, f in zip(fake_keys, fake):
        pr, pf = softmax(real[real_keys.index(key)]), softmax(f)
        total += sum(pr[c] * (np.log(pr[c]) - np.log(pf[c] + 1e-6)) for c in range(6))
    assert metrics.mkl(fake, fake_keys, real, real_keys) == pytest.approx(total / 5, rel=1e-6)


def test_mkl_of_identical_predictions_is_about_zero_and_missing_real_is_an_error():
    logits = np.random.RandomState(9).randn(4, 10)
    keys = list("wxyz")
    assert metrics.mkl(logits, keys, logits, keys) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="no real clip"):
        metrics.mkl(logits, ["w", "x", "y", "q"], logits, keys)


# ------------------------------------------------------------------------------------- classifier metrics
def _ap_brute(y, s):
    pos = np.nonzero(y)[0]
    return np.mean([np.sum(y[s >= s[i]]) / np.sum(s >= s[i]) for i in pos])


def _auc_brute(y, s):
    pairs = list(itertools.product(s[y == 1], s[y == 0]))
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_and_roc_auc_match_brute_force(seed):
    rng = np.random.RandomState(seed)
    y = (rng.rand(40) < 0.3).astype(int)
    y[0], y[1] = 1, 0
    s = np.round(rng.rand(40), 1)  # many ties
    assert metrics.average_precision(y, s) == pytest.approx(_ap_brute(y, s), rel=1e-12)
    assert metrics.roc_auc(y, s) == pytest.approx(_auc_brute(y, s), rel=1e-12)


def test_classifier_metrics():
    rng = np.random.RandomState(10)
    n, c = 60, 6
    targets = np.arange(n) % c
    logits = rng.randn(n, c)
    logits[np.arange(n), targets] += 1.5
    out = metrics.classifier_metrics(torch.from_numpy(logits), torch.from_numpy(targets))
    top1 = np.mean(logits.argmax(1) == targets)
    top5 = np.mean([t in np.argsort(-row)[:5] for row, t in zip(logits, targets)])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m_ap = np.mean([_ap_brute((targets == k).astype(int), probs[:, k]) for k in range(c)])
    m_auc = np.mean([_auc_brute((targets == k).astype(int), probs[:, k]) for k in range(c)])
    assert out["accuracy_1"] == pytest.approx(top1)
    assert out["accuracy_5"] == pytest.approx(top5)
    assert out["mAP"] == pytest.approx(m_ap, rel=1e-6)
    assert out["mROCAUC"] == pytest.approx(m_auc, rel=1e-6)
    assert out["dprime"] == pytest.approx(np.sqrt(2) * scipy.stats.norm.ppf(m_auc), rel=1e-5)


def test_classifier_metrics_absent_class_as_original():
    logits = np.random.RandomState(11).randn(10, 4)
    targets = np.array([0, 1, 2] * 3 + [0])  # class 3 never occurs
    with pytest.warns(UserWarning, match="never"):
        out = metrics.classifier_metrics(logits, targets)
    assert out["mAP"] == 0.0 and out["mROCAUC"] == 0.5 and out["dprime"] == pytest.approx(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skipped = metrics.classifier_metrics(logits, targets, skip_absent_classes=True)
    assert 0 < skipped["mROCAUC"] < 1


def test_too_few_samples_are_named_for_each_metric():
    rng = np.random.default_rng(0)
    assert metrics.isc_too_few(19, 10) and "fewer than 2 per split" in metrics.isc_too_few(8, 10)
    assert metrics.isc_too_few(20, 10) is None
    reason, note = metrics.kid_too_few(8, 8, 1000)
    assert "whole of both sets" in reason and note is None
    reason, note = metrics.kid_too_few(8, 32, 1000)
    assert reason is None and "subsets of 8 instead of 1000" in note
    assert metrics.kid_too_few(1, 40)[0].startswith("subsets of 1 sample")
    assert metrics.kid_too_few(2000, 3000) == (None, None)
    small, large = rng.standard_normal((3, 16)), rng.standard_normal((40, 16))
    reason, note = metrics.fid_too_few(small, large)
    assert "reals: 3 samples, covariance rank 2 < 16" in reason and "fakes" not in reason and note is None
    assert metrics.fid_too_few(large, large) == (None, None)
    # rank-deficient but not degenerate (the paper's VAS regime): computed, with a note
    reason, note = metrics.fid_too_few(rng.standard_normal((12, 16)), large)
    assert reason is None and "covariance rank 11 < 16" in note
    # a duplicated set has fewer independent samples than rows
    assert "rank 2" in metrics.fid_too_few(np.tile(small, (5, 1)), large)[0]
