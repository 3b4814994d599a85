"""How good is a diffusion model? Likelihood, sample quality and the exact checks on toy data.

- :func:`bits_per_dim`: held-out bits/dim through the core's variational bound, the full pass over
  all T steps (:func:`refdiff.variational_bound`) and the unbiased Monte-Carlo estimate
  (:func:`refdiff.variational_bound_mc`) with its standard error, plus the mean per-timestep terms
  (where in t the bits are spent).
- :func:`digits_sample_quality`: for the 8x8 digits, a Fréchet distance in the feature space of
  refdiff's own digits classifier (:mod:`refdiff.evaluation.classifier`), put on a scale: the
  *floor* (real training images vs the held-out images: what a perfect model would score) and the
  *ceiling* (samples of the independent-pixel baseline vs the held-out images); the classifier's
  confidence and class coverage over the samples; and a memorisation check
  (:func:`memorisation_report`: each sample's distance to its nearest training image, next to
  the same statistic for real held-out images).
- :func:`toy_mixture_report` and :func:`toy_bound_gap`: on the Gaussian-mixture toys the data
  density is known exactly (:class:`refdiff.GaussianMixtureOracle`), so the samples' exact NLL and
  the gap between the bound and the exact NLL can be measured, not estimated.

Everything here is NumPy (and SciPy); no torch. A denoiser is any callable ``(x_t, t) ->
model_output`` (the ONNX runtime's :class:`OnnxDenoiser`, or a PyTorch model wrapped by the
caller to take and return arrays of one namespace).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..bound import variational_bound, variational_bound_mc
from ..config import DiffusionConfig
from ..data import to_model_range
from ..oracle import GaussianMixtureOracle

__all__ = [
    "bits_per_dim",
    "digits_sample_quality",
    "frechet_distance",
    "frechet_distance_gaussians",
    "importance_timestep_probs",
    "memorisation_report",
    "nearest_neighbour_distances",
    "to_jsonable",
    "toy_bound_gap",
    "toy_mixture_report",
]

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """``obj`` with NumPy arrays and scalars turned into lists and Python numbers (for JSON);
    non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _images_of(x: Any, what: str) -> np.ndarray:
    """uint8 [N, C, H, W] from an array or an :class:`~refdiff.data.ImageDataset`."""
    x = getattr(x, "images", x)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        got = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{what} must be uint8 images [N, C, H, W], got {got}")
    if x.ndim != 4:
        raise ValueError(f"{what} must have shape [N, C, H, W], got {tuple(x.shape)}")
    return x


def _mean_and_stderr(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


def _to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy of an array of any backend (NumPy, CuPy, torch), without importing one."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------


def nearest_neighbour_distances(
    queries_uint8: np.ndarray, reference_uint8: np.ndarray, *, chunk: int = 1024
) -> np.ndarray:
    """For each query image, the L2 distance to its nearest reference image, in [0, 1] pixel
    units (pixels divided by 255): float64 [N_queries].

    0 means the query is an exact copy of a reference image; two 8x8 images that differ by one
    fully black vs fully white pixel are 1 apart.
    """
    q = _images_of(queries_uint8, "queries")
    r = _images_of(reference_uint8, "reference images")
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
    """
    s = _images_of(samples_uint8, "samples")
    tr = _images_of(train, "training images")
    ho = _images_of(heldout, "held-out images")
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


# --------------------------------------------------------------------------------------------
# Sample quality on the digits
# --------------------------------------------------------------------------------------------


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

    s = _images_of(samples_uint8, "samples")
    tr = _images_of(train, "training images")
    te = _images_of(test, "held-out images")
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


# --------------------------------------------------------------------------------------------
# Bits per dimension through the bound
# --------------------------------------------------------------------------------------------


def bits_per_dim(
    denoiser: Callable[[Any, Any], Any],
    diffusion: DiffusionConfig,
    images_uint8: np.ndarray,
    *,
    full: bool = True,
    num_draws: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    timestep_probs: np.ndarray | None = None,
    dtype: Any = np.float32,
    xp: Any = None,
    device: Any = None,
) -> dict[str, Any]:
    """Bits/dim of 8-bit images under a diffusion model, through the core's variational bound.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on arrays of namespace ``xp``, with ``t`` the timestep indices
        of the model's own schedule (``diffusion.build_schedule()``).
    diffusion : DiffusionConfig
        The model's settings: schedule, prediction, variance, decoder, clipping, image shape.
    images_uint8 : numpy.ndarray
        ``uint8 [N, C, H, W]`` with ``(C, H, W) == diffusion.image_shape``.
    full : bool
        Compute the full bound (all T terms per image: T denoiser calls per batch).
    num_draws : int
        Timesteps per image of the Monte-Carlo estimate (≥ 2), or 0 to skip it.
    batch_size : int
        Images per denoiser call.
    seed : int
        Seed of the bound's noise; image i's noise depends on (seed, i) only, so results do not
        depend on ``batch_size``. The trainer's periodic evaluation uses seed 0 too.
    progress : bool
        Show a tqdm progress bar (on stderr).
    timestep_probs : array_like [T], optional
        Importance distribution of the Monte-Carlo estimate's timesteps (positive, summing to 1;
        see :func:`importance_timestep_probs`); default uniform. Either way it is unbiased.
    dtype : floating dtype
        The dtype of the data given to the bound (float32, as the models are trained).
    xp, device : optional
        The array namespace (and device) the denoiser takes; default: ``denoiser.xp`` when the
        denoiser has one (the ONNX runtime does), else NumPy.

    Returns
    -------
    dict
        ``bpd_full`` (mean over images) and ``bpd_full_stderr`` (its standard error over the
        images), ``prior_bpd`` (L_T), ``terms_bpd`` (float64 [T]: the mean of each L_t in bits/dim,
        index t as in the code, so ``terms_bpd[0]`` is the decoder term L_0) and ``x0_mse``
        ([T]); ``bpd_mc`` and ``bpd_mc_stderr`` (the Monte-Carlo noise of that estimate:
        sqrt(Σ_i se_i²) / N, how far it may be from the full bound on these images); ``None``
        for parts not computed. Also ``num_images``, ``num_draws``, ``T`` and the seconds each
        part took.
    """
    from tqdm import tqdm

    images = _images_of(images_uint8, "images")
    shape = tuple(diffusion.image_shape)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"the model takes images of shape (C, H, W) = {shape}, but the images have shape "
            f"{tuple(images.shape[1:])}"
        )
    if images.shape[0] < 1:
        raise ValueError("need at least one image")
    if (
        isinstance(num_draws, bool)
        or not isinstance(num_draws, int)
        or num_draws == 1
        or num_draws < 0
    ):
        raise ValueError(f"num_draws must be 0 (skip) or an int >= 2, got {num_draws!r}")
    if not full and num_draws == 0:
        raise ValueError("nothing to compute: full=False and num_draws=0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if xp is None:
        xp = getattr(denoiser, "xp", None)
    if xp is None:
        import array_api_compat.numpy as xp

    schedule = diffusion.build_schedule()
    T = schedule.num_timesteps
    n = images.shape[0]
    x_all = to_model_range(images, dtype)
    common = {
        "prediction": diffusion.prediction,
        "variance": diffusion.variance,
        "decoder": diffusion.decoder,
        "clip_denoised": diffusion.clip_denoised,
        "seed": seed,
    }
    starts = range(0, n, batch_size)
    total = len(starts) * ((T if full else 0) + (1 if num_draws else 0))
    bar = tqdm(total=total, desc="bits/dim", unit="call", disable=not progress, leave=False)

    def arr(a: np.ndarray) -> Any:
        return xp.asarray(a) if device is None else xp.asarray(a, device=device)

    result: dict[str, Any] = {
        "num_images": n,
        "T": T,
        "seed": seed,
        "num_draws": num_draws,
        "mc_timesteps": "uniform" if timestep_probs is None else "importance",
        "bpd_full": None,
        "bpd_full_stderr": None,
        "prior_bpd": None,
        "terms_bpd": None,
        "x0_mse": None,
        "bpd_mc": None,
        "bpd_mc_stderr": None,
        "seconds_full": None,
        "seconds_mc": None,
    }
    try:
        if full:
            t0 = time.perf_counter()
            totals, priors = [], []
            terms_sum, mse_sum = np.zeros(T), np.zeros(T)
            for i in starts:
                x = arr(x_all[i : i + batch_size])
                idx = arr(np.arange(i, i + x.shape[0], dtype=np.int64))
                res = variational_bound(
                    schedule,
                    denoiser,
                    x,
                    sample_indices=idx,
                    progress=lambda *_: bar.update(1),
                    **common,
                )
                totals.append(_to_numpy(res.total_bpd).astype(np.float64))
                priors.append(_to_numpy(res.prior_bpd).astype(np.float64))
                terms_sum += _to_numpy(res.terms_bpd).astype(np.float64).sum(axis=0)
                mse_sum += _to_numpy(res.x0_mse).astype(np.float64).sum(axis=0)
            tot = np.concatenate(totals)
            result["bpd_full"], result["bpd_full_stderr"] = _mean_and_stderr(tot)
            result["prior_bpd"] = float(np.concatenate(priors).mean())
            result["terms_bpd"] = terms_sum / n
            result["x0_mse"] = mse_sum / n
            result["seconds_full"] = time.perf_counter() - t0
        if num_draws:
            t0 = time.perf_counter()
            est, var = [], []
            for i in starts:
                x = arr(x_all[i : i + batch_size])
                idx = arr(np.arange(i, i + x.shape[0], dtype=np.int64))
                mc = variational_bound_mc(
                    schedule,
                    denoiser,
                    x,
                    num_draws=num_draws,
                    timestep_probs=timestep_probs,
                    sample_indices=idx,
                    **common,
                )
                est.append(_to_numpy(mc.estimate_bpd).astype(np.float64))
                var.append(_to_numpy(mc.stderr_bpd).astype(np.float64) ** 2)
                bar.update(1)
            result["bpd_mc"] = float(np.concatenate(est).mean())
            result["bpd_mc_stderr"] = float(math.sqrt(np.concatenate(var).sum()) / n)
            result["seconds_mc"] = time.perf_counter() - t0
    finally:
        bar.close()
    return result


def importance_timestep_probs(
    denoiser: Callable[[Any, Any], Any],
    diffusion: DiffusionConfig,
    pilot_uint8: np.ndarray,
    *,
    uniform_share: float = 0.1,
    seed: int = 1,
    dtype: Any = np.float32,
    xp: Any = None,
    device: Any = None,
) -> np.ndarray:
    """A timestep distribution for the Monte-Carlo bound, from a pilot run of the full bound.

    The variance of L_t / p(t) is smallest for p(t) ∝ √E[L_t²] (the rule of improved DDPM's
    loss-second-moment sampler). The second moments are measured on a few pilot images, which
    should not be the images evaluated (training images, say), so that p stays independent of
    them and the estimate unbiased; a ``uniform_share`` of uniform probability is mixed in so that
    no timestep is starved. Costs T denoiser calls on the pilot batch.

    Returns
    -------
    numpy.ndarray
        float64 [T], positive, summing to 1: ``timestep_probs`` of :func:`bits_per_dim`.
    """
    pilot = _images_of(pilot_uint8, "pilot images")
    if tuple(pilot.shape[1:]) != tuple(diffusion.image_shape) or pilot.shape[0] < 1:
        raise ValueError(
            f"need at least one pilot image of shape {tuple(diffusion.image_shape)}, got "
            f"{tuple(pilot.shape)}"
        )
    if not 0.0 < float(uniform_share) <= 1.0:
        raise ValueError(f"uniform_share must lie in (0, 1], got {uniform_share!r}")
    if xp is None:
        xp = getattr(denoiser, "xp", None)
    if xp is None:
        import array_api_compat.numpy as xp
    x = to_model_range(pilot, dtype)
    x = xp.asarray(x) if device is None else xp.asarray(x, device=device)
    res = variational_bound(
        diffusion.build_schedule(),
        denoiser,
        x,
        prediction=diffusion.prediction,
        variance=diffusion.variance,
        decoder=diffusion.decoder,
        clip_denoised=diffusion.clip_denoised,
        seed=seed,
    )
    terms = _to_numpy(res.terms_bpd).astype(np.float64)  # [B, T]
    rms = np.sqrt(np.mean(np.clip(terms, 0.0, None) ** 2, axis=0))
    T = rms.shape[0]
    shaped = rms / rms.sum() if rms.sum() > 0 else np.full(T, 1.0 / T)
    probs = (1.0 - uniform_share) * shaped + uniform_share / T
    return probs / probs.sum()


# --------------------------------------------------------------------------------------------
# Gaussian-mixture toys: exact densities
# --------------------------------------------------------------------------------------------


def _oracle_of(mixture: Any) -> GaussianMixtureOracle:
    try:
        return GaussianMixtureOracle(mixture.weights, mixture.means, mixture.stds)
    except AttributeError:
        raise TypeError(
            "mixture must have weights [K], means [K, D] and stds [K] (refdiff.data.GaussianMixture "
            f"or refdiff.GaussianMixtureOracle), got {type(mixture).__name__}"
        ) from None


def _true_samples(mixture: Any, n: int, seed: int) -> np.ndarray:
    from ..data import GaussianMixture

    return GaussianMixture(mixture.weights, mixture.means, mixture.stds).sample(n, seed)


def toy_mixture_report(
    samples: Any, mixture: Any, *, n_reference: int | None = None, seed: int = 12345
) -> dict[str, Any]:
    """Samples of a model trained on a Gaussian-mixture toy, scored by the exact data density.

    Parameters
    ----------
    samples : array_like [N, D] (or [N, ...] with D values per sample)
        Generated points, N ≥ 2.
    mixture : refdiff.data.GaussianMixture or refdiff.GaussianMixtureOracle
        The true data distribution.
    n_reference : int, optional
        Fresh true samples for the entropy estimate (default: max(N, 10000)).
    seed : int
        Seed of those true samples.

    Returns
    -------
    dict (nats per sample unless stated)
        ``nll``, ``nll_stderr``: exact -log q(x) of the samples under the true density q.
        ``entropy``, ``entropy_stderr``: the same for true samples (a Monte-Carlo estimate of
        H(q)). ``nll_excess`` = nll - entropy, with ``nll_excess_stderr``: about 0 when the
        samples follow q; positive when they spill into low-density regions. It is *not* a
        divergence: samples squeezed onto the modes score below H(q) (negative excess), which
        ``component_shares`` (the share of samples whose most probable component is k, next to
        ``component_weights``) and ``min_share_ratio`` (min_k share_k / w_k: 0 if a mode is
        missed) reveal.
    """
    oracle = _oracle_of(mixture)
    x = np.asarray(_to_numpy(samples), dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"samples must have shape [N, D], got {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != oracle.dim:
        raise ValueError(
            f"the mixture is {oracle.dim}-dimensional, the samples have {x.shape[1]} values each"
        )
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(x)))} sample values are NaN/inf")
    n_ref = max(x.shape[0], 10000) if n_reference is None else int(n_reference)
    if n_ref < 2:
        raise ValueError(f"n_reference must be >= 2, got {n_reference!r}")
    ref = _true_samples(mixture, n_ref, seed)
    nll, nll_se = _mean_and_stderr(oracle.nll(x))
    ent, ent_se = _mean_and_stderr(oracle.nll(ref))

    # The most probable component of each sample (the responsibilities' argmax).
    logp = (
        np.log(oracle.weights)[None, :]
        - 0.5 * ((x[:, None, :] - oracle.means[None]) ** 2).sum(-1) / oracle.stds**2
        - oracle.dim * np.log(oracle.stds)[None, :]
    )
    shares = np.bincount(np.argmax(logp, axis=1), minlength=oracle.weights.shape[0]) / x.shape[0]
    return {
        "num_samples": int(x.shape[0]),
        "dim": oracle.dim,
        "nll": nll,
        "nll_stderr": nll_se,
        "entropy": ent,
        "entropy_stderr": ent_se,
        "nll_excess": nll - ent,
        "nll_excess_stderr": math.hypot(nll_se, ent_se),
        "component_shares": shares.tolist(),
        "component_weights": oracle.weights.tolist(),
        "min_share_ratio": float(np.min(shares / oracle.weights)),
        "num_reference": n_ref,
    }


def toy_bound_gap(
    denoiser: Callable[[Any, Any], Any],
    diffusion: DiffusionConfig,
    mixture: Any,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """How loose is the variational bound? The full bound vs the exact NLL on toy data.

    Draws ``n`` true points x_0 from ``mixture``, computes the full bound with the continuous
    Gaussian decoder (``decoder="gaussian"``: the toys are real-valued) and the exact -log q(x_0),
    and reports their difference. The bound is ≥ the NLL in expectation (Jensen), so the gap is
    ≥ 0 up to its standard error; it is the sum of KL(q(x_T) ‖ N(0, I)) and the reverse process's
    mismatch with the true one. The exact denoiser of :class:`refdiff.GaussianMixtureOracle` with
    its exact variance leaves only the prior term for a single Gaussian.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on NumPy arrays shaped ``[B, *diffusion.image_shape]``.
    diffusion : DiffusionConfig
        Its ``image_shape`` must hold D values (e.g. (D, 1, 1)); its decoder is ignored.
    mixture : refdiff.data.GaussianMixture or refdiff.GaussianMixtureOracle
    n : int
        Points, ≥ 2.

    Returns
    -------
    dict
        ``bound``, ``nll``, ``gap`` (means, nats per point), ``gap_stderr``, and ``gap_bpd`` (the
        gap in bits per dimension), ``prior_bpd``.
    """
    oracle = _oracle_of(mixture)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    shape = tuple(diffusion.image_shape)
    if math.prod(shape) != oracle.dim:
        raise ValueError(
            f"the model's image_shape {shape} holds {math.prod(shape)} values, the mixture is "
            f"{oracle.dim}-dimensional"
        )
    x0 = _true_samples(mixture, n, seed)
    schedule = diffusion.build_schedule()
    bound, prior = [], []
    for i in range(0, n, batch_size):
        chunk = x0[i : i + batch_size]
        res = variational_bound(
            schedule,
            denoiser,
            chunk.reshape(chunk.shape[0], *shape),
            prediction=diffusion.prediction,
            variance=diffusion.variance,
            decoder="gaussian",
            clip_denoised=diffusion.clip_denoised,
            seed=seed,
            sample_indices=np.arange(i, i + chunk.shape[0], dtype=np.int64),
        )
        bound.append(np.asarray(res.total_bpd, dtype=np.float64))
        prior.append(np.asarray(res.prior_bpd, dtype=np.float64))
    bound_nats = np.concatenate(bound) * oracle.dim * LN2
    nll = oracle.nll(x0)
    gap, gap_se = _mean_and_stderr(bound_nats - nll)
    return {
        "num_points": n,
        "dim": oracle.dim,
        "bound": float(bound_nats.mean()),
        "nll": float(nll.mean()),
        "gap": gap,
        "gap_stderr": gap_se,
        "gap_bpd": gap / (oracle.dim * LN2),
        "prior_bpd": float(np.concatenate(prior).mean()),
    }
