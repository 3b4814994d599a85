"""Sample quality: a Fréchet distance on a scale, classifier confidence and coverage, memorisation.

- :func:`frechet_distance`: the FID formula between two sets of feature vectors;
- :func:`memorisation_report`: each sample's distance to its nearest training image, next to the
  same statistic for real held-out images;
- :func:`digits_sample_quality`: for the 8x8 digits, the Fréchet distance in the feature space of
  refdiff's own digits classifier (:mod:`refdiff.evaluation.classifier`) put on a scale, the
  *floor* (real training images vs the held-out images: what a perfect model would score) and the
  *ceiling* (samples of the independent-pixel baseline vs the held-out images), with the
  classifier's confidence and class coverage.

NumPy and SciPy only: no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import check_uint8_images

__all__ = [
    "digits_sample_quality",
    "frechet_distance",
    "frechet_distance_gaussians",
    "memorisation_report",
    "nearest_neighbour_distances",
]


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigh; tiny negative
    eigenvalues from rounding are set to 0)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """The squared 2-Wasserstein (Fréchet) distance between N(μ1, Σ1) and N(μ2, Σ2).

        FD = ‖μ1 - μ2‖² + tr(Σ1) + tr(Σ2) - 2 tr((Σ1 Σ2)^{1/2})

    The trace of the matrix square root is computed as Σ_i √λ_i of the symmetric PSD matrix
    Σ1^{1/2} Σ2 Σ1^{1/2} (which is similar to Σ1 Σ2): the same value as the real part of
    ``scipy.linalg.sqrtm(Σ1 @ Σ2)``, but with no complex round-off and no failure on the singular
    covariances that fewer samples than features give. Rounding may leave a result of order
    -1e-12 for identical inputs; it is clipped to 0.

    Parameters
    ----------
    mu1, cov1 : array_like [D], [D, D]
        Mean and covariance of the first Gaussian.
    mu2, cov2 : array_like [D], [D, D]
        Mean and covariance of the second (positive semi-definite).

    Returns
    -------
    float
        The distance, at least 0.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    cov1, cov2 = (
        np.atleast_2d(np.asarray(cov1, np.float64)),
        np.atleast_2d(np.asarray(cov2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"need two means [D] and two covariances [D, D] of one D; got {mu1.shape}, "
            f"{cov1.shape}, {mu2.shape}, {cov2.shape}"
        )
    s1 = _psd_sqrt(cov1)
    inner = s1 @ cov2 @ s1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def _feature_matrix(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a feature matrix [N, F], got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(
            f"{what} has {a.shape[0]} sample(s); a Fréchet distance needs at least 2 (for a "
            "covariance), and far more for a stable one"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return a


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between two sets of feature vectors, each summarised by its mean and
    covariance (the FID formula, :func:`frechet_distance_gaussians`).

    Parameters
    ----------
    feats_a, feats_b : array_like [N_a, F] and [N_b, F]
        At least 2 rows each, the same number F of features.

    Returns
    -------
    float
        ≥ 0; 0 for identical sets. Like FID it is biased upwards for finite N, so compare values
        computed with the same numbers of samples (what the floor and ceiling of
        :func:`digits_sample_quality` do).
    """
    a = _feature_matrix(feats_a, "feats_a")
    b = _feature_matrix(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dimensions differ: feats_a has {a.shape[1]} features, feats_b {b.shape[1]}"
        )
    return frechet_distance_gaussians(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )


def nearest_neighbour_distances(
    queries_uint8: np.ndarray, reference_uint8: np.ndarray, *, chunk: int = 1024
) -> np.ndarray:
    """For each query image, the L2 distance to its nearest reference image, in [0, 1] pixel
    units (pixels divided by 255): float64 [N_queries].

    0 means the query is an exact copy of a reference image; two 8x8 images that differ by one
    fully black vs fully white pixel are 1 apart.

    Parameters
    ----------
    queries_uint8 : numpy.ndarray
        uint8 [N_queries, C, H, W].
    reference_uint8 : numpy.ndarray
        uint8 [N_reference, C, H, W], at least one image of the queries' shape.
    chunk : int
        Queries per block of the distance matrix (bounds the memory to chunk × N_reference).

    Returns
    -------
    numpy.ndarray
        float64 [N_queries]: each query's distance to its nearest reference image.
    """
    q = check_uint8_images(queries_uint8, "queries")
    r = check_uint8_images(reference_uint8, "reference images")
    if q.shape[1:] != r.shape[1:]:
        raise ValueError(
            f"queries are images of shape {q.shape[1:]}, the reference images {r.shape[1:]}"
        )
    if r.shape[0] == 0:
        raise ValueError("need at least one reference image")
    rf = r.reshape(r.shape[0], -1).astype(np.float64) / 255.0
    r2 = np.sum(rf * rf, axis=1)
    out = np.empty(q.shape[0])
    for i in range(0, q.shape[0], chunk):
        qf = q[i : i + chunk].reshape(-1, rf.shape[1]).astype(np.float64) / 255.0
        d2 = np.sum(qf * qf, axis=1)[:, None] + r2[None, :] - 2.0 * (qf @ rf.T)
        out[i : i + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    # Two 8-bit images are 0 or at least 1/255 apart; the expansion above leaves ~1e-8 for 0.
    return np.where(out < 1e-6, 0.0, out)


def memorisation_report(samples_uint8: np.ndarray, *, train: Any, heldout: Any) -> dict[str, Any]:
    """Are the samples closer to the training images than new real images are?

    Each sample's L2 distance to its nearest training image (pixels in [0, 1]) is summarised and
    compared with the same statistic for real held-out images, which the model never saw: a model
    that generalises gives samples about as far from the training set as held-out images are; a
    model that memorises gives many samples much closer (``nn_exact_copies`` counts samples equal
    to a training image, ``nn_share_below_heldout_p5`` the share of samples nearer than the 5th
    percentile of the held-out images' distances: about 0.05 for a model that does not copy).

    Parameters
    ----------
    samples_uint8 : numpy.ndarray
        uint8 [N, C, H, W] generated images.
    train : numpy.ndarray
        uint8 [N_train, C, H, W] the model's training images.
    heldout : numpy.ndarray
        uint8 [N_heldout, C, H, W] real images the model never saw.

    Returns
    -------
    dict
        Mean, median and minimum nearest-training distance of the samples and of the held-out
        images, the held-out 5th percentile, ``nn_share_below_heldout_p5`` and
        ``nn_exact_copies``.
    """
    s = check_uint8_images(samples_uint8, "samples")
    tr = check_uint8_images(train, "training images")
    ho = check_uint8_images(heldout, "held-out images")
    d_s = nearest_neighbour_distances(s, tr)
    d_h = nearest_neighbour_distances(ho, tr)
    p5 = float(np.percentile(d_h, 5))
    return {
        "nn_train_dist_mean": float(d_s.mean()),
        "nn_train_dist_median": float(np.median(d_s)),
        "nn_train_dist_min": float(d_s.min()),
        "heldout_nn_train_dist_mean": float(d_h.mean()),
        "heldout_nn_train_dist_median": float(np.median(d_h)),
        "heldout_nn_train_dist_min": float(d_h.min()),
        "heldout_nn_train_dist_p5": p5,
        "nn_share_below_heldout_p5": float(np.mean(d_s < p5)),
        "nn_exact_copies": int(np.count_nonzero(d_s == 0.0)),
    }


def digits_sample_quality(
    samples_uint8: np.ndarray,
    *,
    train: Any,
    test: Any,
    classifier: Any = None,
    min_class_share: float = 0.02,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample quality of generated 8x8 digits, each figure with its scale.

    Parameters
    ----------
    samples_uint8 : numpy.ndarray
        ``uint8 [N, 1, 8, 8]`` generated images, N ≥ 2.
    train, test : numpy.ndarray or ImageDataset
        The digits training split (the classifier and the baseline were fitted on it) and the
        held-out test split (the reference the samples are compared with).
    classifier : DigitsClassifier, optional
        Default: :func:`refdiff.evaluation.classifier.digits_classifier` (fitted once per process).
    min_class_share : float
        A class counts as covered when at least this share of the samples is predicted as it.
    seed : int
        Seeds the baseline's samples and the subset of training images used for the floor.

    Returns
    -------
    dict
        ``fd``: Fréchet distance of the samples vs the held-out images in the classifier's
        feature space. ``fd_floor``: the same for N real training images (a random subset, all
        of them if fewer than N) vs the held-out images: what a perfect model would score with
        this many samples. ``fd_ceiling``: N samples of the independent-pixel baseline
        (:class:`refdiff.baseline.IndependentPixelModel` fitted on ``train``) vs the held-out
        images. ``fd_relative`` = (fd - floor) / (ceiling - floor): 0 is as good as real data,
        1 as poor as independent pixels.
        ``confidence``: the classifier's mean max-probability over the samples
        (``heldout_confidence`` for real images); ``class_histogram``: predicted classes;
        ``class_coverage``: share of the 10 classes predicted for ≥ ``min_class_share`` of the
        samples. Plus :func:`memorisation_report`'s entries and the classifier's test accuracy.
    """
    from ..baseline import IndependentPixelModel
    from .classifier import DIGITS_SHAPE, digits_classifier

    s = check_uint8_images(samples_uint8, "samples")
    tr = check_uint8_images(train, "training images")
    te = check_uint8_images(test, "held-out images")
    for what, arr in (("samples", s), ("training images", tr), ("held-out images", te)):
        if tuple(arr.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(
                f"digits sample quality needs images of shape {DIGITS_SHAPE}; the {what} have "
                f"shape {tuple(arr.shape[1:])}"
            )
    n = s.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a Fréchet distance, got {n}")
    if not 0.0 <= float(min_class_share) <= 1.0:
        raise ValueError(f"min_class_share must lie in [0, 1], got {min_class_share!r}")
    clf = digits_classifier() if classifier is None else classifier

    f_test = clf.features(te)
    rng = np.random.default_rng(seed)
    real = tr if n >= tr.shape[0] else tr[np.sort(rng.choice(tr.shape[0], n, replace=False))]
    baseline = IndependentPixelModel().fit(tr).sample(n, seed=seed)
    fd = frechet_distance(clf.features(s), f_test)
    floor = frechet_distance(clf.features(real), f_test)
    ceiling = frechet_distance(clf.features(baseline), f_test)

    probs = clf.predict_proba(s)
    probs_test = clf.predict_proba(te)
    hist = np.bincount(np.argmax(probs, axis=1), minlength=probs.shape[1])
    hist_test = np.bincount(np.argmax(probs_test, axis=1), minlength=probs.shape[1])
    share = hist / n
    result: dict[str, Any] = {
        "num_samples": n,
        "fd": fd,
        "fd_floor": floor,
        "fd_ceiling": ceiling,
        "fd_relative": (fd - floor) / (ceiling - floor) if ceiling > floor else float("nan"),
        "fd_floor_num_real": int(real.shape[0]),
        "num_heldout": int(te.shape[0]),
        "confidence": float(probs.max(axis=1).mean()),
        "heldout_confidence": float(probs_test.max(axis=1).mean()),
        "class_histogram": hist.astype(int).tolist(),
        "heldout_class_histogram": hist_test.astype(int).tolist(),
        "class_coverage": float(np.mean(share >= min_class_share)),
        "min_class_share": float(min_class_share),
        "classifier_test_accuracy": float(clf.test_accuracy),
    }
    result.update(memorisation_report(s, train=tr, heldout=te))
    return result
