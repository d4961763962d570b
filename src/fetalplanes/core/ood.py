"""Out-of-distribution scores on a model's penultimate features and logits (numpy only).

The feature-space gate of ``fetalplanes`` ("not a fetal plane"), computed by the torch-free
runtime from the features the model file outputs beside its logits:

- **Mahalanobis** (Lee et al., NeurIPS 2018): class means and one shared covariance of the
  penultimate features of the *training* split; the score is the squared Mahalanobis distance to
  the closest class mean, ``min_c (f - mu_c)^T P (f - mu_c)``. The covariance is the pooled
  within-class covariance shrunk towards ``trace/D * I`` by the Ledoit-Wolf (2004) estimate of the
  shrinkage, because a training split of a few hundred images cannot estimate a 1280 x 1280 matrix
  (the empirical one is singular when N < D); it is stored in low-rank form (:class:`Precision`). pytorch-ood's ``Mahalanobis`` reports half this
  distance with its own (unshrunk) precision; ``tests/core/test_ood.py`` checks the two agree.
- **kNN** (Sun et al., ICML 2022): the Euclidean distance of the L2-normalised feature to its k-th
  nearest neighbour in a small bank of normalised training features (pytorch-ood's ``KNN``).
- **max-softmax** and **energy** (Hendrycks & Gimpel 2017; Liu et al. 2020) on the logits, for
  the benchmark; both signed so that *higher means more out-of-distribution*.
- **combined**: the larger of the Mahalanobis and kNN scores, each standardised by its mean and
  standard deviation on the validation split, so that one threshold serves both.

Thresholds accept a stated share of the validation split (95 % by default): a score strictly
above the threshold is out of distribution. The fitted statistics travel in the model file as a
bounded, versioned text blob (:func:`encode_stats` / :func:`decode_stats`); the small summary
(which score, threshold, acceptance) lives in ``ModelSpec.ood``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.postprocess import softmax

SCORES = ("msp", "energy", "mahalanobis", "knn", "combined")
FEATURE_SCORES = ("mahalanobis", "knn", "combined")
DEFAULT_SCORE = "combined"
DEFAULT_ACCEPTANCE = 0.95
DEFAULT_KNN_K = 5
KNN_BANK_MAX = 192
MAX_RANK = 128
STATS_FORMAT = 1
# Bounds on a stored blob (it is read from an untrusted model file before anything is decoded).
MAX_DIM = 4096
MAX_CLASSES = 1000
MAX_BLOB_CHARS = 64 * 1024 * 1024


class OODStatsError(DataError):
    """Stored OOD statistics cannot be read (the message names the source and what was wrong)."""


@dataclass(frozen=True)
class OODStats:
    """Fitted feature statistics.

    ``means``: (C, D) class means; ``precision``: the shared precision (:class:`Precision`); ``bank``: (K, D) L2-normalised training features
    for kNN, or None; ``knn_k``: the neighbour rank; ``norm``: per score (mean, sd) on validation,
    for the combined score.
    """

    means: np.ndarray
    precision: "Precision"
    bank: np.ndarray | None = None
    knn_k: int = DEFAULT_KNN_K
    norm: dict[str, tuple[float, float]] | None = None

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


# ----------------------------------------------------------------------------- fitting


def ledoit_wolf(residuals: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of already-centred rows: ``(cov (D, D), shrinkage in [0, 1])``.

    ``(1 - s) S + s (tr S / D) I`` with ``S = R^T R / N`` and s the Ledoit & Wolf (2004, J.
    Multivariate Anal. 88) estimate; the same numbers as ``sklearn.covariance.LedoitWolf
    (assume_centered=True)``.
    """
    x = np.asarray(residuals, dtype=np.float64)
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    x2 = x ** 2
    beta_ = float((x2.T @ x2).sum())
    delta_ = float((s ** 2).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * np.trace(s) + d * mu ** 2) / d
    beta = min(beta, delta)
    shrink = 0.0 if beta == 0 else float(beta / delta)
    cov = (1.0 - shrink) * s
    cov.flat[:: d + 1] += shrink * mu
    return cov, shrink


def class_means(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) mean feature per class; ``DataError`` when a class has no sample."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    counts = np.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        missing = np.nonzero(counts == 0)[0].tolist()
        raise DataError(f"cannot fit OOD statistics: class index(es) {missing} have no training image")
    return np.stack([f[y == c].mean(axis=0) for c in range(n_classes)])


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: str | float = "ledoit-wolf",
                    rank: int = MAX_RANK) -> tuple[np.ndarray, "Precision", float]:
    """Class means (C, D), the shared precision in low-rank form, and the shrinkage used.

    ``features`` (N, D), ``labels`` (N,) in 0..C-1. ``shrinkage``: "ledoit-wolf" or a fixed s in
    [0, 1] (0 = the empirical pooled covariance). The covariance ``(1 - s) S + s (tr S / D) I`` is
    stored by its ``rank`` largest eigen-directions plus one level ``c`` for all others (the shrunk
    level plus the mean of the left-out eigenvalues): exact when ``rank`` >= rank(S), which holds
    whenever the training split has fewer than ``rank`` + C images; otherwise the smallest
    directions share one variance. This keeps a 1280-d model's statistics to a few MB.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise DataError(f"cannot fit OOD statistics on features of shape {f.shape} with {len(y)} labels")
    means = class_means(f, y, n_classes)
    resid = f - means[y]
    if shrinkage == "ledoit-wolf":
        cov, s = ledoit_wolf(resid)
    else:
        s = float(shrinkage)
        if not 0.0 <= s <= 1.0:
            raise UsageError(f"shrinkage must be 'ledoit-wolf' or a number in [0, 1], got {shrinkage!r}")
        emp = resid.T @ resid / len(f)
        cov = (1 - s) * emp + s * np.trace(emp) / emp.shape[0] * np.eye(emp.shape[0])
    return means, Precision.from_covariance(cov, rank), float(s)


@dataclass(frozen=True)
class Precision:
    """A precision matrix ``P = I / c - U diag(w) U^T`` (U: (D, r) orthonormal, w: (r,), c > 0)."""

    basis: np.ndarray
    weights: np.ndarray
    level: float

    @classmethod
    def from_covariance(cls, cov: np.ndarray, rank: int = 0) -> "Precision":
        """The inverse of ``cov`` (D, D) keeping ``rank`` eigen-directions (0 = all)."""
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        vals, vecs = vals[::-1], vecs[:, ::-1]
        d = len(vals)
        floor = 1e-9 * max(float(vals.mean()), 1e-12)  # keeps a degenerate feature invertible
        vals = np.maximum(vals, floor)
        r = d if rank <= 0 or rank >= d else int(rank)
        level = float(vals[r:].mean()) if r < d else float(vals[-1])
        return cls(vecs[:, :r].copy(), 1.0 / level - 1.0 / vals[:r], level)

    @classmethod
    def from_matrix(cls, precision: np.ndarray) -> "Precision":
        """The same form for a given (full) precision matrix, e.g. pytorch-ood's."""
        vals, vecs = np.linalg.eigh((precision + precision.T) / 2)
        level = 1.0 / float(vals.max())
        return cls(vecs, 1.0 / level - vals, level)

    def matrix(self) -> np.ndarray:
        d = self.basis.shape[0]
        return np.eye(d) / self.level - (self.basis * self.weights) @ self.basis.T


def knn_bank(features: np.ndarray, labels: np.ndarray, size: int = KNN_BANK_MAX, seed: int = 0) -> np.ndarray:
    """Up to ``size`` L2-normalised training features, drawn evenly over the classes (seeded)."""
    f = normalise(features)
    y = np.asarray(labels, dtype=int)
    if len(f) <= size:
        return f
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = max(1, size // len(classes))
    picked = [rng.permutation(np.nonzero(y == c)[0])[:per] for c in classes]
    idx = np.sort(np.concatenate(picked))[:size]
    return f[idx]


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float64: the KNN paper's normalisation."""
    f = np.asarray(features, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- scores (higher = more OOD)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: Precision) -> np.ndarray:
    """(N,) squared Mahalanobis distance ``min_c (f - mu_c)^T P (f - mu_c)``, float64."""
    f = np.asarray(features, dtype=np.float64)
    m = np.asarray(means, dtype=np.float64)
    sq = (f ** 2).sum(1)[:, None] - 2 * f @ m.T + (m ** 2).sum(1)[None, :]  # (N, C) squared Euclidean
    pf, pm = f @ precision.basis, m @ precision.basis  # (N, r), (C, r)
    low = ((pf[:, None, :] - pm[None, :, :]) ** 2 * precision.weights).sum(-1)
    return np.maximum((sq / precision.level - low).min(axis=1), 0.0)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int = DEFAULT_KNN_K) -> np.ndarray:
    """(N,) distance of each normalised feature to its k-th nearest neighbour in ``bank``."""
    q = normalise(features)
    b = np.asarray(bank, dtype=np.float64)
    k = max(1, min(int(k), len(b)))
    d2 = np.maximum((q ** 2).sum(1)[:, None] - 2 * q @ b.T + (b ** 2).sum(1)[None, :], 0.0)
    return np.sqrt(np.partition(d2, k - 1, axis=1)[:, k - 1])


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) 1 - max softmax(logits / T)."""
    return 1.0 - softmax(logits, temperature).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) energy ``-T logsumexp(logits / T)`` (Liu et al. 2020): higher for OOD inputs."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    return -temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def feature_scores(features: np.ndarray, stats: OODStats) -> dict[str, np.ndarray]:
    """Every feature score available from ``stats``: mahalanobis, knn (with a bank), combined."""
    out = {"mahalanobis": mahalanobis_score(features, stats.means, stats.precision)}
    if stats.bank is not None:
        out["knn"] = knn_score(features, stats.bank, stats.knn_k)
    if stats.norm:
        out["combined"] = np.max([(out[n] - m) / s for n, (m, s) in stats.norm.items() if n in out], axis=0)
    return out


def score(name: str, features: np.ndarray, stats: OODStats) -> np.ndarray:
    """The named feature score (one of :data:`FEATURE_SCORES`); ``UsageError`` if unavailable."""
    got = feature_scores(features, stats)
    if name not in got:
        raise UsageError(f"OOD score {name!r} is not available from these statistics; have {sorted(got)}")
    return got[name]


# ----------------------------------------------------------------------------- thresholds, metrics


def threshold_at_acceptance(id_scores: np.ndarray, acceptance: float = DEFAULT_ACCEPTANCE) -> float:
    """The smallest t with at least ``acceptance`` of ``id_scores`` <= t (accept when score <= t)."""
    s = np.sort(np.asarray(id_scores, dtype=np.float64))
    if not 0 < acceptance <= 1:
        raise UsageError(f"acceptance must be in (0, 1], got {acceptance}")
    if len(s) == 0:
        raise DataError("cannot set an OOD threshold on an empty validation split")
    return float(s[max(1, math.ceil(round(acceptance * len(s), 9))) - 1])


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve with OOD as the positive class (ties count 1/2); NaN if a set is empty."""
    a, b = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """FPR@95: the share of OOD inputs accepted at the threshold that accepts ``tpr`` of the ID ones."""
    t = threshold_at_acceptance(id_scores, tpr)
    b = np.asarray(ood_scores, dtype=np.float64)
    return float((b <= t).mean()) if len(b) else float("nan")


def bootstrap_interval(fn: Any, id_scores: np.ndarray, ood_scores: np.ndarray, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile interval of ``fn(id, ood)`` resampling both sets with replacement (images as units)."""
    a, b = np.asarray(id_scores), np.asarray(ood_scores)
    if len(a) < 2 or len(b) < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = [fn(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(n_boot)]
    lo, hi = np.nanpercentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def rate_interval(flags: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean of a 0/1 array."""
    x = np.asarray(flags, dtype=float)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, threshold: float | None = None,
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUROC, FPR@95 and (with a threshold) the rejection rates, each with a 95 % bootstrap interval."""
    a, b = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    out: dict[str, Any] = {
        "n_id": int(len(a)), "n_ood": int(len(b)),
        "auroc": auroc(a, b), "auroc_ci95": bootstrap_interval(auroc, a, b, n_boot, seed),
        "fpr95": fpr_at_tpr(a, b), "fpr95_ci95": bootstrap_interval(fpr_at_tpr, a, b, n_boot, seed),
    }
    if threshold is not None:
        out.update(threshold=float(threshold),
                   ood_rejected=float((b > threshold).mean()) if len(b) else float("nan"),
                   ood_rejected_ci95=rate_interval(b > threshold, n_boot, seed),
                   id_rejected=float((a > threshold).mean()) if len(a) else float("nan"),
                   id_rejected_ci95=rate_interval(a > threshold, n_boot, seed))
    return out


# ----------------------------------------------------------------------------- fit everything


def fit_stats(train_features: np.ndarray, train_labels: np.ndarray, n_classes: int,
              val_features: np.ndarray, *, score_name: str = DEFAULT_SCORE, acceptance: float = DEFAULT_ACCEPTANCE,
              knn_k: int = DEFAULT_KNN_K, bank_size: int = KNN_BANK_MAX,
              shrinkage: str | float = "ledoit-wolf") -> tuple[OODStats, dict[str, Any]]:
    """Fit the statistics on training features and the threshold on validation features.

    Returns ``(stats, summary)``; ``summary`` is what goes into ``ModelSpec.ood`` (score, threshold,
    acceptance, dimensions, counts, shrinkage, the validation acceptance actually reached).
    """
    if score_name not in FEATURE_SCORES:
        raise UsageError(f"unknown OOD score {score_name!r}; choose one of {list(FEATURE_SCORES)}")
    means, precision, shrink = fit_mahalanobis(train_features, train_labels, n_classes, shrinkage)
    bank = knn_bank(train_features, train_labels, bank_size)
    stats = OODStats(means, precision, bank, knn_k)
    val = feature_scores(val_features, stats)
    norm = {n: (float(v.mean()), float(max(v.std(), 1e-12))) for n, v in val.items()}
    stats = OODStats(means, precision, bank, knn_k, norm)
    val_score = score(score_name, val_features, stats)
    threshold = threshold_at_acceptance(val_score, acceptance)
    summary = {
        "score": score_name, "threshold": threshold, "acceptance": acceptance,
        "val_acceptance": float((val_score <= threshold).mean()), "n_val": int(len(val_score)),
        "n_train": int(len(train_labels)), "dim": stats.dim, "n_classes": int(n_classes),
        "shrinkage": shrink, "rank": int(precision.basis.shape[1]), "knn_k": int(min(knn_k, len(bank))), "knn_bank": int(len(bank)),
        "fit_on": "train", "threshold_on": "val",
    }
    return stats, summary


# ----------------------------------------------------------------------------- storage


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def encode_stats(stats: OODStats) -> str:
    """The statistics as one JSON text (float32 arrays in base64) for a model file."""
    arrays = {"means": stats.means, "basis": stats.precision.basis, "weights": stats.precision.weights[None, :]}
    if stats.bank is not None:
        arrays["bank"] = stats.bank
    body = {"format": STATS_FORMAT, "knn_k": int(stats.knn_k), "level": float(stats.precision.level), "norm": {k: list(v) for k, v in (stats.norm or {}).items()},
            "arrays": {k: {"shape": list(np.shape(v)), "data": _b64(v)} for k, v in arrays.items()}}
    return json.dumps(body, sort_keys=True)


def stats_digest(blob: str) -> str:
    """sha256 of a stored blob (recorded in the spec so a blob from another model is refused)."""
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def decode_stats(blob: str, source: str = "model file", digest: str | None = None) -> OODStats:
    """Read :func:`encode_stats`'s text; ``OODStatsError`` naming ``source`` for anything malformed."""
    if not isinstance(blob, str) or len(blob) > MAX_BLOB_CHARS:
        raise OODStatsError(f"{source}: OOD statistics missing or larger than {MAX_BLOB_CHARS:,} characters")
    if digest is not None and stats_digest(blob) != digest:
        raise OODStatsError(f"{source}: OOD statistics do not match the spec's digest (edited or from another model)")
    try:
        body = json.loads(blob)
        if body.get("format") != STATS_FORMAT:
            raise ValueError(f"format {body.get('format')!r}, expected {STATS_FORMAT}")
        arrays = {k: _array(v, k) for k, v in body["arrays"].items()}
        means, basis, weights = arrays["means"], arrays["basis"], arrays["weights"]
        c, d = means.shape
        r = basis.shape[1]
        if basis.shape[0] != d or weights.shape != (1, r) or not (0 < d <= MAX_DIM and 0 < c <= MAX_CLASSES):
            raise ValueError(f"means {means.shape}, basis {basis.shape} and weights {weights.shape} do not fit")
        level = float(body["level"])
        if not (np.isfinite(level) and level > 0):
            raise ValueError(f"precision level {level} is not a positive number")
        bank = arrays.get("bank")
        if bank is not None and (bank.ndim != 2 or bank.shape[1] != d or len(bank) > 16 * KNN_BANK_MAX):
            raise ValueError(f"kNN bank of shape {bank.shape} does not fit dimension {d}")
        norm = {str(k): (float(v[0]), float(v[1])) for k, v in body.get("norm", {}).items()}
        precision = Precision(basis.astype(np.float64), weights[0].astype(np.float64), level)
        return OODStats(means.astype(np.float64), precision,
                        None if bank is None else bank.astype(np.float64), int(body.get("knn_k", DEFAULT_KNN_K)), norm)
    except OODStatsError:
        raise
    except Exception as err:  # any malformed JSON / base64 / shape
        raise OODStatsError(f"{source}: unreadable OOD statistics ({type(err).__name__}: {err})") from None


def _array(entry: dict[str, Any], name: str) -> np.ndarray:
    shape = [int(s) for s in entry["shape"]]
    if len(shape) != 2 or any(s <= 0 or s > 16 * MAX_DIM for s in shape):
        raise ValueError(f"array {name!r} has shape {shape}")
    data = entry["data"]
    if len(data) != 4 * math.ceil(shape[0] * shape[1] * 4 / 3):  # checked before decoding
        raise ValueError(f"array {name!r}: {len(data)} base64 characters for shape {shape}")
    a = np.frombuffer(base64.b64decode(data, validate=True), dtype="<f4").reshape(shape)
    if not np.isfinite(a).all():
        raise ValueError(f"array {name!r} holds non-finite values")
    return a


def verdicts(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: out of distribution when the score is strictly above the threshold (NaN counts as OOD)."""
    s = np.asarray(scores, dtype=np.float64)
    return ~(s <= threshold)
