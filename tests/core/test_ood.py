"""core.ood against the reference implementations: pytorch-ood's Mahalanobis and KNN detectors,
scikit-learn's Ledoit-Wolf estimator and ROC AUC; thresholds, metrics and the stored blob."""

from __future__ import annotations

import numpy as np
import pytest

from fetalplanes.core import ood


def _features(n: int = 120, d: int = 16, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centers = rng.normal(0, 3, (c, d))
    mix = rng.normal(0, 1, (d, d)) / np.sqrt(d)
    return (centers[y] + rng.normal(0, 1, (n, d)) @ mix).astype(np.float32), y


def test_mahalanobis_equals_pytorch_ood() -> None:
    torch = pytest.importorskip("torch")
    detector_mod = pytest.importorskip("pytorch_ood.detector")
    f, y = _features()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # pytorch-ood allocates its means/covariance in the default dtype
    try:
        det = detector_mod.Mahalanobis(None).fit_features(torch.from_numpy(f).double(), torch.from_numpy(y))
    finally:
        torch.set_default_dtype(old)
    means, _, _ = ood.fit_mahalanobis(f, y, 3, shrinkage=0.0)
    np.testing.assert_allclose(means, det.mu.double().numpy(), rtol=1e-5, atol=1e-5)
    # Same precision -> same scores: pytorch-ood reports half the squared distance.
    precision = ood.Precision.from_matrix(det.precision.double().numpy())
    np.testing.assert_allclose(precision.matrix(), det.precision.double().numpy(), rtol=1e-7, atol=1e-9)
    q, _ = _features(40, seed=1)
    ours = ood.mahalanobis_score(q, det.mu.double().numpy(), precision)
    ref = det.predict_features(torch.from_numpy(q).double()).numpy()
    np.testing.assert_allclose(ours / 2, ref, rtol=1e-5, atol=1e-6)
    # Our own unshrunk fit gives the same distances up to the scale N (pytorch-ood's covariance is a
    # sum, not a mean) and the two ridges (1e-6 absolute there, 1e-9 x mean eigenvalue here): 1e-4.
    m2, w2, _ = ood.fit_mahalanobis(f, y, 3, shrinkage=0.0)
    np.testing.assert_allclose(ood.mahalanobis_score(q, m2, w2) / len(f) / 2, ref, rtol=1e-4)


def test_knn_equals_pytorch_ood() -> None:
    torch = pytest.importorskip("torch")
    detector_mod = pytest.importorskip("pytorch_ood.detector")
    f, y = _features(200)
    q, _ = _features(30, seed=2)
    bank = ood.knn_bank(f, y, size=1000)
    assert len(bank) == len(f)
    for k in (1, 5):
        det = detector_mod.KNN(None, k=k).fit_features(torch.from_numpy(f).double(), torch.from_numpy(y))
        ref = det.predict_features(torch.from_numpy(q).double()).numpy()
        np.testing.assert_allclose(ood.knn_score(q, bank, k), ref, rtol=1e-5, atol=1e-6)


def test_ledoit_wolf_equals_sklearn() -> None:
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(3)
    r = rng.normal(size=(30, 50))  # N < D: the empirical covariance is singular
    cov, s = ood.ledoit_wolf(r)
    ref = covariance.LedoitWolf(assume_centered=True).fit(r)
    assert s == pytest.approx(ref.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-9, atol=1e-12)
    assert 0 < s < 1


def test_auroc_and_fpr_match_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 300), np.round(rng.normal(1.5, 1, 200), 1)  # rounding makes ties
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    assert ood.auroc(a, b) == pytest.approx(metrics.roc_auc_score(y, np.r_[a, b]), abs=1e-12)
    t = ood.threshold_at_acceptance(a, 0.95)
    assert (a <= t).mean() >= 0.95 and (a < t).mean() < 0.95
    assert ood.fpr_at_tpr(a, b) == pytest.approx((b <= t).mean())


def test_fit_stats_threshold_accepts_95_percent_of_validation_and_rejects_far_points() -> None:
    f, y = _features(300, d=32)
    val, _ = _features(100, d=32, seed=5)
    stats, summary = ood.fit_stats(f, y, 3, val)
    s_val = ood.score("combined", val, stats)
    assert summary["val_acceptance"] == pytest.approx((s_val <= summary["threshold"]).mean())
    assert 0.95 <= summary["val_acceptance"] < 0.97
    far = np.random.default_rng(6).normal(0, 30, (50, 32))
    assert ood.verdicts(ood.score("combined", far, stats), summary["threshold"]).all()
    assert 0 < summary["shrinkage"] < 1 and summary["dim"] == 32


def test_low_rank_precision_is_exact_when_the_rank_covers_the_data_and_close_otherwise() -> None:
    f, y = _features(40, d=64)  # N = 40 < D: rank(S) <= 37
    q, _ = _features(20, d=64, seed=7)
    means, full, s = ood.fit_mahalanobis(f, y, 3, rank=0)
    _, low, _ = ood.fit_mahalanobis(f, y, 3, rank=38)
    resid = f.astype(np.float64) - means[y]
    cov, _ = ood.ledoit_wolf(resid)
    np.testing.assert_allclose(full.matrix(), np.linalg.inv(cov), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ood.mahalanobis_score(q, means, low), ood.mahalanobis_score(q, means, full), rtol=1e-6)
    _, small, _ = ood.fit_mahalanobis(f, y, 3, rank=8)  # 8 directions + one level: same ranking, roughly
    from scipy.stats import spearmanr

    assert spearmanr(ood.mahalanobis_score(q, means, small), ood.mahalanobis_score(q, means, full))[0] > 0.8


def test_stats_blob_round_trips_and_refuses_tampering() -> None:
    f, y = _features(90)
    stats, _ = ood.fit_stats(f, y, 3, f[:30])
    blob = ood.encode_stats(stats)
    back = ood.decode_stats(blob, "m.onnx", ood.stats_digest(blob))
    q = f[:7]
    np.testing.assert_allclose(ood.score("combined", q, back), ood.score("combined", q, stats), rtol=1e-4, atol=1e-4)
    with pytest.raises(ood.OODStatsError, match="m.onnx: .*digest"):
        ood.decode_stats(blob.replace('"knn_k": 5', '"knn_k": 6'), "m.onnx", ood.stats_digest(blob))
    with pytest.raises(ood.OODStatsError, match="m.onnx: unreadable"):
        ood.decode_stats(blob.replace('"shape": [3, 16]', '"shape": [3, 17]', 1), "m.onnx")
    with pytest.raises(ood.OODStatsError, match="unreadable"):
        ood.decode_stats("{not json", "m.onnx")


def test_msp_and_energy_are_higher_for_flat_logits() -> None:
    sharp, flat = np.array([[10.0, 0, 0]]), np.array([[0.1, 0, 0]])
    assert ood.msp_score(flat)[0] > ood.msp_score(sharp)[0]
    assert ood.energy_score(flat)[0] > ood.energy_score(sharp)[0]
    assert ood.energy_score(sharp)[0] == pytest.approx(-np.log(np.exp(10) + 2))
