"""Evaluation metrics of SpecVQGAN (spec §7.2) and of its classifiers (spec §6.4), in numpy / scipy / torch.

Generation metrics take Melception features (`models.melception.Melception.features`):
    fid(real_2048, fake_2048)                      Fréchet distance of the '2048' features
    inception_score(fake_logits_unbiased)         ISc, 10 splits, shuffled with RandomState(2020)
    kid(real_2048, fake_2048)                      KID, 100 subsets of min(1000, N1, N2), cubic polynomial kernel
    mkl(fake_logits, fake_keys, real_logits, real_keys)   mean KL(real || fake) over fakes paired with their clip
Classifier metrics: classifier_metrics(logits, targets) -> accuracy_1, accuracy_5, mAP, mROCAUC, dprime.
Sample-count checks: isc_too_few, kid_too_few, fid_too_few say (as a sentence) when a set is too small for the
metric's own definition, so that callers report a reason instead of a degenerate figure.

The procedures follow the original (torch-fidelity's FID/ISc/KID as adapted in `evaluation/metrics/*.py`, and
`vggishish/metrics.py`); sklearn's average_precision_score and roc_auc_score are re-implemented here.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.stats
import torch

RNG_SEED = 2020  # the original's seed for ISc shuffling and KID subsets


def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_2d(name: str, x: np.ndarray) -> None:
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array with N >= 2, got shape {x.shape}")


# --------------------------------------------------------------------------------------------------- FID
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (np.cov, rowvar False, N - 1 normalisation) of (N, D) features."""
    features = _np(features)
    _check_2d("features", features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

    If sqrtm is not finite, it is retried with eps * I added to both covariances; an imaginary part above 1e-3 on
    the diagonal of the root is an error (as the original).
    """
    mu1, mu2 = np.atleast_1d(_np(mu1)), np.atleast_1d(_np(mu2))
    sigma1, sigma2 = np.atleast_2d(_np(sigma1)), np.atleast_2d(_np(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm of the covariance product has an imaginary component "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are ill-conditioned "
                             f"(too few samples for the feature dimension?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(features_1, features_2) -> float:
    """FID between two sets of (N, 2048) features (order of the sets does not matter)."""
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))


# --------------------------------------------------------------------------------------------------- ISc
def inception_score(logits, splits: int = 10, shuffle: bool = True, seed: int = RNG_SEED) -> dict[str, float]:
    """ISc of (N, C) logits ('logits_unbiased'): per split exp(mean_x KL(p(y|x) || p(y))), mean and std.

    Float64; shuffled with RandomState(seed); split boundaries i * N // splits.
    """
    logits = torch.as_tensor(_np(logits))
    _check_2d("logits", logits.numpy())
    n = logits.shape[0]
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    p = logits.softmax(dim=1)
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_p_chunk = p[lo:hi], log_p[lo:hi]
        log_q = torch.log(p_chunk.mean(dim=0, keepdim=True))  # log of the marginal p(y) over the split
        scores.append((p_chunk * (log_p_chunk - log_q)).sum(dim=1).mean().exp().item())
    return {"inception_score_mean": float(np.mean(scores)), "inception_score_std": float(np.std(scores))}


def isc_too_few(n: int, splits: int = 10) -> str | None:
    """Why ISc of `n` samples in `splits` splits is degenerate (a split of one sample scores exactly 1), else None."""
    if n // max(splits, 1) < 2:
        return (f"{n} samples give fewer than 2 per split of {splits}: ISc needs at least {2 * splits} samples "
                f"(each split of one sample scores exactly 1)")
    return None


# --------------------------------------------------------------------------------------------------- KID
def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """(x . y * gamma + coef0) ** degree with gamma = 1 / D by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2: off-diagonal means of K_XX and K_YY minus twice the mean of K_XY."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid(features_1, features_2, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = RNG_SEED) -> dict[str, float]:
    """KID: unbiased polynomial-kernel MMD^2 over `subsets` random subsets, mean and std.

    Each subset draws min(subset_size, N1, N2) rows without replacement from set 1, then from set 2, from one
    RandomState(seed) stream.
    """
    f1, f2 = _np(features_1), _np(features_2)
    _check_2d("features_1", f1)
    _check_2d("features_2", f2)
    size = min(subset_size, len(f1), len(f2))
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), size, replace=False)]
        y = f2[rng.choice(len(f2), size, replace=False)]
        kernel = lambda a, b: polynomial_kernel(a, b, degree, gamma, coef0)
        mmds[i] = mmd2_unbiased(kernel(x, x), kernel(x, y), kernel(y, y))
    return {"kernel_inception_distance_mean": float(np.mean(mmds)),
            "kernel_inception_distance_std": float(np.std(mmds))}


def kid_too_few(n1: int, n2: int, subset_size: int = 1000) -> tuple[str | None, str | None]:
    """(why KID is degenerate or None, a note when its subsets are smaller than requested or None).

    Degenerate: subsets of fewer than 2 rows (no unbiased MMD), or subsets that are the whole of both sets (every
    subset is the same: the std is 0 by construction). Smaller subsets than `subset_size` are the original's
    min(1000, N1, N2) rule, kept with a note.
    """
    size = min(subset_size, n1, n2)
    if size < 2:
        return f"subsets of {size} sample(s): the unbiased MMD needs at least 2 per set", None
    if size == n1 == n2:
        return (f"both sets have {size} samples, so every subset is the whole of both sets (std 0 by "
                f"construction): KID needs more samples than subset_size in at least one set"), None
    if size < subset_size:
        return None, (f"subsets of {size} instead of {subset_size} (the sets have {n1} and {n2} samples); "
                      f"the std reflects only the resampling of the larger set")
    return None, None


FID_MIN_RANK_SHARE = 0.25  # below this share of the feature dimension a covariance says too little for FID


def fid_too_few(real, fake) -> tuple[str | None, str | None]:
    """(why FID of these (N, D) feature sets is degenerate or None, a note when it is rank-deficient or None).

    A covariance of rank r < D (fewer than D + 1 independent samples) has no spread along D - r directions.
    FID is still the standard figure there (the paper's VAS numbers compare 2048-d features of fewer reals than
    that, and are reproduced as computed), so it only gets a note; below `FID_MIN_RANK_SHARE` of D (e.g. the
    demo's 8 reals in 128 dimensions) most of the space is missing and the figure is degenerate.
    """
    reasons, notes = [], []
    for name, f in (("reals", _np(real)), ("fakes", _np(fake))):
        d = f.shape[1]
        rank = int(np.linalg.matrix_rank(np.atleast_2d(np.cov(f, rowvar=False)))) if len(f) >= 2 else 0
        if rank < d:
            text = f"{name}: {len(f)} samples, covariance rank {rank} < {d} feature dims"
            (reasons if rank < FID_MIN_RANK_SHARE * d else notes).append(text)
    if reasons:
        return (f"FID needs covariances of rank >= {FID_MIN_RANK_SHARE:g} x the feature dimension in both sets ("
                + "; ".join(reasons + notes) + ")"), None
    if notes:
        return None, "rank-deficient covariances, FID biased upward (" + "; ".join(notes) + ")"
    return None, None


# --------------------------------------------------------------------------------------------------- MKL
def mkl(fake_logits, fake_keys: Sequence[str], real_logits, real_keys: Sequence[str], eps: float = 1e-6) -> float:
    """Mean KL(real || fake) of softmax('logits'), each fake paired with the real of the same clip key.

    KL = sum_y p_r (log p_r - log(p_f + eps)); summed over all (fake, real) pairs and divided by the number of
    fakes (a clip with 10 samples counts 10 times). Every fake key must have a real; duplicate real keys are errors.
    """
    fake_logits, real_logits = torch.as_tensor(_np(fake_logits)), torch.as_tensor(_np(real_logits))
    if len(fake_keys) != len(fake_logits) or len(real_keys) != len(real_logits):
        raise ValueError(f"keys and logits differ in length: fakes {len(fake_keys)} keys / {len(fake_logits)} rows, "
                         f"reals {len(real_keys)} keys / {len(real_logits)} rows")
    index = {}
    for i, key in enumerate(real_keys):
        if key in index:
            raise ValueError(f"real clip key {key!r} occurs twice; each real clip must appear once")
        index[key] = i
    missing = sorted({k for k in fake_keys if k not in index})
    if missing:
        raise ValueError(f"{len(missing)} fake(s) have no real clip with the same key, e.g. {missing[:5]}; "
                         f"check that fakes and reals come from the same split")
    if len(fake_keys) == 0:
        raise ValueError("no fakes to evaluate")
    p_real = real_logits[[index[k] for k in fake_keys]].softmax(dim=1)  # (N_fake, C), repeated per sample
    p_fake = fake_logits.softmax(dim=1)
    kl = torch.nn.functional.kl_div((p_fake + eps).log(), p_real, reduction="sum")
    return float(kl) / len(fake_keys)


# ------------------------------------------------------------------------------------- classifier metrics
def average_precision(y_true, scores) -> float:
    """One class's AP as sklearn: sum over thresholds (distinct scores, descending) of (R_k - R_{k-1}) * P_k."""
    y_true, scores = _np(y_true) > 0, _np(scores)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each group of tied scores
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall_step = np.diff(np.r_[0, tps]) / n_pos
    return float(np.sum(recall_step * precision))


def roc_auc(y_true, scores) -> float:
    """One class's ROC AUC: P(score of a positive > score of a negative) with ties counted 1/2."""
    y_true, scores = _np(y_true) > 0, _np(scores)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(scores)  # average ranks for ties
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classifier_metrics(logits, targets, topk: Sequence[int] = (1, 5),
                       skip_absent_classes: bool = False) -> dict[str, float]:
    """Top-k accuracies, mAP, mROCAUC (one-vs-rest on softmax probabilities) and d' = sqrt(2) * Phi^-1(mAUC).

    As the original, if some class never occurs among the targets (its ROC AUC is undefined) a warning is issued
    and mAP = 0, mROCAUC = 0.5; with `skip_absent_classes` the means run over the classes that do occur instead.
    """
    logits = torch.as_tensor(_np(logits, np.float32))
    targets = torch.as_tensor(_np(targets, np.int64))
    n, num_cls = logits.shape
    if targets.shape != (n,):
        raise ValueError(f"targets must be (N,) = ({n},) class indices, got {tuple(targets.shape)}")
    out: dict[str, float] = {}
    preds = torch.topk(logits, k=min(max(topk), num_cls), dim=1).indices
    correct = preds == targets.view(-1, 1)
    for k in topk:
        out[f"accuracy_{k}"] = float(correct[:, :k].sum()) / n
    probs = logits.softmax(dim=1).numpy()
    onehot = np.eye(num_cls, dtype=bool)[targets.numpy()]
    aps = np.array([average_precision(onehot[:, c], probs[:, c]) for c in range(num_cls)])
    aucs = np.array([roc_auc(onehot[:, c], probs[:, c]) for c in range(num_cls)])
    defined = ~np.isnan(aucs)
    if defined.all():
        out["mAP"], out["mROCAUC"] = float(aps.mean()), float(aucs.mean())
    elif skip_absent_classes and defined.any():
        out["mAP"], out["mROCAUC"] = float(aps[defined].mean()), float(aucs[defined].mean())
    else:
        warnings.warn(f"{int((~defined).sum())} of {num_cls} classes never (or always) occur in the targets: "
                      f"mAP and mROCAUC are set to 0 and 0.5 as in the original; do not trust them")
        out["mAP"], out["mROCAUC"] = 0.0, 0.5
    out["dprime"] = float(scipy.stats.norm().ppf(out["mROCAUC"]) * np.sqrt(2))
    return out
