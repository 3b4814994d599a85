"""A small digits classifier, trained by refdiff itself, whose features score generated digits.

The Fréchet distance of :mod:`refdiff.evaluation.quality` needs a feature space in which digits
that look alike lie close together. Inception features (FID) make no sense for 8x8 grey digits, so
refdiff trains its own: a one-hidden-layer network (64 tanh units, softmax over the 10 classes) on
the *training* split of :func:`refdiff.data.load_digits`, pixels scaled to [0, 1].

Training is deterministic: weights start from a seeded generator and are fitted by full-batch
L-BFGS (:func:`scipy.optimize.minimize`) on the cross-entropy plus an L2 penalty, with no
mini-batch shuffling and no threads racing; two fits give bit-identical weights on one machine. It
takes a few seconds (most of it loading scikit-learn's digits) and is done once per process
(:func:`digits_classifier` caches it). The held-out accuracy, 97.5 %, is recorded on the
classifier (:attr:`DigitsClassifier.test_accuracy`).

NumPy and SciPy only: no torch.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

__all__ = [
    "DIGITS_SHAPE",
    "DigitsClassifier",
    "digits_classifier",
    "features",
    "predict_proba",
    "train_digits_classifier",
]

#: Shape of one digits image, [C, H, W].
DIGITS_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def _check_digits(images: object, what: str = "images") -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = getattr(images, "dtype", type(images).__name__)
        raise TypeError(f"{what} must be a uint8 numpy array [N, 1, 8, 8], got {got}")
    if images.ndim != 4 or tuple(images.shape[1:]) != DIGITS_SHAPE:
        raise ValueError(
            f"the digits classifier takes images of shape [N, 1, 8, 8], got {what} of shape "
            f"{tuple(images.shape)}"
        )
    return images


def _inputs(images_uint8: np.ndarray) -> np.ndarray:
    """[N, 64] float64 in [0, 1]."""
    return images_uint8.reshape(images_uint8.shape[0], -1).astype(np.float64) / 255.0


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class DigitsClassifier:
    """A fitted digits MLP: x (64 pixels in [0, 1]) -> h = tanh(x W1 + b1) -> softmax(h W2 + b2).

    Attributes
    ----------
    w1 : float64 array [64, H]
        Input weights (H hidden units).
    b1 : float64 array [H]
        Hidden biases.
    w2 : float64 array [H, 10]
        Output weights.
    b2 : float64 array [10]
        Output biases.
    train_accuracy, test_accuracy : float
        Accuracy on the digits training split it was fitted on and on the held-out test split.
    iterations : int
        L-BFGS iterations the fit took.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    train_accuracy: float = float("nan")
    test_accuracy: float = float("nan")
    iterations: int = 0

    @property
    def num_features(self) -> int:
        return int(self.w1.shape[1])

    def features(self, images_uint8: np.ndarray) -> np.ndarray:
        """The hidden layer's activations (the penultimate layer): float64 [N, H].

        Raises
        ------
        TypeError, ValueError
            For anything but ``uint8`` images ``[N, 1, 8, 8]``.
        """
        x = _inputs(_check_digits(images_uint8))
        return np.tanh(x @ self.w1 + self.b1)

    def predict_proba(self, images_uint8: np.ndarray) -> np.ndarray:
        """Class probabilities, float64 [N, 10] (rows sum to 1)."""
        return _softmax(self.features(images_uint8) @ self.w2 + self.b2)

    def predict(self, images_uint8: np.ndarray) -> np.ndarray:
        """The most probable class per image, int64 [N]."""
        return np.argmax(self.predict_proba(images_uint8), axis=1).astype(np.int64)

    def accuracy(self, images_uint8: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(images_uint8) == np.asarray(labels)))


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Run BLAS on one thread: these matrices are tiny, and threads only add overhead (7x on a
    busy 2-core machine) and a chance of thread-count-dependent rounding."""
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _unpack(
    theta: np.ndarray, d: int, h: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    i = 0
    w1 = theta[i : i + d * h].reshape(d, h)
    i += d * h
    b1 = theta[i : i + h]
    i += h
    w2 = theta[i : i + h * k].reshape(h, k)
    i += h * k
    b2 = theta[i : i + k]
    return w1, b1, w2, b2


def train_digits_classifier(
    *,
    hidden: int = 64,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
) -> DigitsClassifier:
    """Fit the classifier on the digits training split (deterministic; a few seconds).

    Minimises the mean cross-entropy plus ``weight_decay / 2 · (‖W1‖² + ‖W2‖²)`` by full-batch
    L-BFGS from Glorot-uniform weights drawn with ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    hidden : int
        Hidden units H (the feature dimension).
    weight_decay : float
        L2 penalty on the weight matrices (not the biases).
    max_iter : int
        L-BFGS iteration limit.
    seed : int
        Seed of the initial weights.

    Returns
    -------
    DigitsClassifier
        The fitted weights and their accuracies on the training and held-out splits.
    """
    from ..data import load_digits  # scikit-learn's loader is slow to import; only here

    train, test = load_digits("train"), load_digits("test")
    assert train.labels is not None and test.labels is not None  # the digits are labelled
    x = _inputs(train.images)
    y = np.asarray(train.labels, dtype=np.int64)
    n, d = x.shape
    k = NUM_CLASSES
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    rng = np.random.default_rng(seed)
    lim1, lim2 = np.sqrt(6.0 / (d + hidden)), np.sqrt(6.0 / (hidden + k))
    theta0 = np.concatenate(
        [
            rng.uniform(-lim1, lim1, d * hidden),
            np.zeros(hidden),
            rng.uniform(-lim2, lim2, hidden * k),
            np.zeros(k),
        ]
    )

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w1, b1, w2, b2 = _unpack(theta, d, hidden, k)
        hid = np.tanh(x @ w1 + b1)
        logits = hid @ w2 + b2
        z = logits - logits.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -np.sum(onehot * log_p) / n + 0.5 * weight_decay * (
            np.sum(w1 * w1) + np.sum(w2 * w2)
        )
        g_logits = (np.exp(log_p) - onehot) / n  # [n, k]
        g_w2 = hid.T @ g_logits + weight_decay * w2
        g_b2 = g_logits.sum(axis=0)
        g_pre = (g_logits @ w2.T) * (1.0 - hid * hid)
        g_w1 = x.T @ g_pre + weight_decay * w1
        g_b1 = g_pre.sum(axis=0)
        return float(loss), np.concatenate([g_w1.ravel(), g_b1, g_w2.ravel(), g_b2])

    with _one_blas_thread():
        res = minimize(
            loss_and_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": int(max_iter)}
        )
    w1, b1, w2, b2 = (a.copy() for a in _unpack(res.x, d, hidden, k))
    for a in (w1, b1, w2, b2):
        a.flags.writeable = False
    clf = DigitsClassifier(w1, b1, w2, b2, iterations=int(res.nit))
    object.__setattr__(clf, "train_accuracy", clf.accuracy(train.images, train.labels))
    object.__setattr__(clf, "test_accuracy", clf.accuracy(test.images, test.labels))
    return clf


@functools.lru_cache(maxsize=1)
def digits_classifier() -> DigitsClassifier:
    """The project's digits classifier with the default settings, fitted once per process.

    Returns
    -------
    DigitsClassifier
        ``train_digits_classifier()``, cached.
    """
    return train_digits_classifier()


def features(images_uint8: np.ndarray) -> np.ndarray:
    """Penultimate-layer features of :func:`digits_classifier`: float64 [N, 64]."""
    return digits_classifier().features(images_uint8)


def predict_proba(images_uint8: np.ndarray) -> np.ndarray:
    """Class probabilities of :func:`digits_classifier`: float64 [N, 10]."""
    return digits_classifier().predict_proba(images_uint8)
