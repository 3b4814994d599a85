"""An analytic oracle: Gaussian and Gaussian-mixture data with their exact denoisers and densities.

For data x_0 ~ Σ_k w_k N(μ_k, s_k² I) (a single Gaussian is K = 1), every marginal of the forward
process is again a mixture:

    q(x_t) = Σ_k w_k N(√ᾱ_t μ_k, v_k I),   v_k = ᾱ_t s_k² + 1 - ᾱ_t,

and with responsibilities r_k(x_t) ∝ w_k N(x_t; √ᾱ_t μ_k, v_k I) the exact posterior-mean denoiser is

    E[ε | x_t]   = Σ_k r_k √(1 - ᾱ_t) (x_t - √ᾱ_t μ_k) / v_k,
    E[x_0 | x_t] = Σ_k r_k (μ_k + √ᾱ_t s_k² (x_t - √ᾱ_t μ_k) / v_k),
    Var[x_0 | x_t] (per dimension) = Σ_k r_k (s_k² (1 - ᾱ_t) / v_k + m_k²) - (Σ_k r_k m_k)².

With the exact reverse variance β̃_t + c_t² Var[x_0 | x_t] (c_t the posterior's x_0 coefficient),
Gaussian data make p_θ equal to the true reverse process, and the bound equals the exact NLL up to
the prior mismatch KL(q(x_T) ‖ N(0, I)): the oracle tests the bound and the samplers against the
truth. All in float64 NumPy-compatible array-API code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._array import Array, gather, get_namespace
from ._checks import check_int
from ._enums import Prediction, Variance

__all__ = ["TOY_MIXTURES", "GaussianMixture", "toy_mixture"]

#: Names accepted by :func:`toy_mixture`.
#: the names :func:`toy_mixture` knows
TOY_MIXTURES = ("bimodal1d", "ring8")

# Samples drawn from a seed come in fixed blocks, each from its own generator seeded by (seed,
# block index): sample i is then a function of (seed, i) alone, whatever n is, and drawing stays
# vectorised.
_SAMPLE_BLOCK = 1024


def _frozen_float64(value: object, what: str) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)  # a private copy, then made read-only
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """x_0 ~ Σ_k w_k N(μ_k, s_k² I) in D dimensions, with every diffusion quantity exact.

    The data of the toy experiments and the oracle of the property tests: the density of the
    data and of every noised version of it, the exact denoiser E[ε | x_t], E[x_0 | x_t] and
    Var[x_0 | x_t], in float64 array-API code (any backend).

    Parameters
    ----------
    weights : array_like [K]
        Positive, summing to 1 (within 1e-9).
    means : array_like [K, D]
        The components' means.
    stds : array_like [K]
        Positive (isotropic components).

    Raises
    ------
    ValueError
        If a shape does not match or a value is out of its domain.
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self) -> None:
        weights = _frozen_float64(self.weights, "weights")
        means = _frozen_float64(self.means, "means")
        stds = _frozen_float64(self.stds, "stds")
        if weights.ndim != 1 or len(weights) < 1:
            raise ValueError(f"weights must have shape [K] with K >= 1, got {weights.shape}")
        k = len(weights)
        if means.ndim != 2 or means.shape[0] != k or means.shape[1] < 1:
            raise ValueError(f"means must have shape [{k}, D] with D >= 1, got {means.shape}")
        if stds.shape != (k,):
            raise ValueError(f"stds must have shape [{k}], got {stds.shape}")
        if (weights <= 0).any() or abs(weights.sum() - 1.0) > 1e-9:
            raise ValueError(f"weights must be positive and sum to 1, got {weights.tolist()}")
        if (stds <= 0).any():
            raise ValueError(f"stds must be positive, got {stds.tolist()}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)

    @classmethod
    def gaussian(cls, mean: Any, std: float) -> GaussianMixture:
        """A single isotropic Gaussian N(mean, std² I)."""
        return cls(
            np.ones(1), np.asarray(mean, dtype=np.float64).reshape(1, -1), np.array([float(std)])
        )

    @property
    def dim(self) -> int:
        """The dimension D of a sample."""
        return int(self.means.shape[1])

    def sample(self, n: int, seed: int | np.random.Generator) -> np.ndarray:
        """``n`` float64 samples ``[n, D]`` from the data distribution.

        With an int ``seed``, sample i depends only on ``(seed, i)``: ``sample(10, s)[:5]`` equals
        ``sample(5, s)``, whatever the number drawn at once or the split of the work. With a
        ``numpy.random.Generator``, the samples are drawn from it (advancing it).
        """
        n = check_int(n, "n", minimum=0)
        if isinstance(seed, np.random.Generator):
            k = seed.choice(self.weights.shape[0], size=n, p=self.weights)
            return self.means[k] + self.stds[k, None] * seed.standard_normal((n, self.dim))
        seed = check_int(seed, "seed (an integer or a numpy Generator)", minimum=0)
        cumulative = np.cumsum(self.weights)
        blocks = []
        for b in range(-(-n // _SAMPLE_BLOCK)):
            rng = np.random.default_rng([int(seed), b])
            u = rng.random(_SAMPLE_BLOCK)
            z = rng.standard_normal((_SAMPLE_BLOCK, self.dim))
            # min(): the last cumulative weight may round to just under 1.
            k = np.minimum(np.searchsorted(cumulative, u, side="right"), len(self.weights) - 1)
            blocks.append(self.means[k] + self.stds[k, None] * z)
        if not blocks:
            return np.empty((0, self.dim), dtype=np.float64)
        return np.concatenate(blocks)[:n]

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of √ᾱ x_0 + √(1 - ᾱ) ε: means scaled by √ᾱ, variances ᾱ s_k² + 1 - ᾱ."""
        a = float(alpha_bar)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar!r}")
        return GaussianMixture(
            self.weights, np.sqrt(a) * self.means, np.sqrt(a * self.stds**2 + (1.0 - a))
        )

    def probability_flow(self, x: Array, alpha_bar_from: float, alpha_bar_to: float) -> Array:
        """Where the probability-flow ODE takes ``x`` [B, D] from ᾱ = ``alpha_bar_from`` to
        ``alpha_bar_to``, exactly, for a single Gaussian (K = 1).

        The ODE's velocity is linear for Gaussian data and keeps the standardised value
        z = (x_t - √ᾱ_t m) / √(ᾱ_t s² + 1 - ᾱ_t) of every sample fixed: the map is
        x ↦ √ᾱ' m + z √(ᾱ' s² + 1 - ᾱ'). The reference the solvers' order is measured against.
        """
        if self.weights.shape[0] != 1:
            raise ValueError("the closed-form flow needs a single Gaussian (K = 1)")
        for a in (alpha_bar_from, alpha_bar_to):
            if not 0.0 < float(a) <= 1.0:
                raise ValueError(f"alpha_bar must lie in (0, 1], got {a!r}")
        xp = get_namespace(x)
        self._check_rows(x)
        a0, a1, s2 = float(alpha_bar_from), float(alpha_bar_to), float(self.stds[0] ** 2)
        m = _on(self.means[0], x, xp)
        z = (x - math.sqrt(a0) * m) / math.sqrt(a0 * s2 + 1.0 - a0)
        return math.sqrt(a1) * m + z * math.sqrt(a1 * s2 + 1.0 - a1)

    # -- the marginal q(x_t) ---------------------------------------------------------------
    def _components(self, x: Array, acp: Array, xp: Any) -> tuple[Array, Array, Array]:
        """log responsibilities' numerators, centred x, v_k for x [B, D] and ᾱ [B, 1]."""
        mu = _on(self.means, x, xp)  # [K, D]
        s2 = _on(self.stds**2, x, xp)  # [K]
        logw = _on(np.log(self.weights), x, xp)
        a = acp[:, :, None]  # [B, 1, 1]
        v = a * s2[None, None, :] + (1.0 - a)  # [B, 1, K]
        diff = x[:, :, None] - xp.sqrt(a) * xp.permute_dims(mu, (1, 0))[None, :, :]  # [B, D, K]
        D = x.shape[1]
        logp = (
            logw[None, :]
            - 0.5 * xp.sum(diff**2, axis=1) / v[:, 0, :]
            - 0.5 * D * xp.log(2 * math.pi * v[:, 0, :])
        )  # [B, K]
        return logp, diff, v

    def log_marginal(self, x: Array, alphas_cumprod: Array | float) -> Array:
        """log q_t(x) for x [B, D] where ᾱ_t is given per example ([B]) or as a scalar; ᾱ = 1 is
        the data density itself."""
        xp = get_namespace(x)
        self._check_rows(x)
        acp = _acp_column(alphas_cumprod, x, xp)
        logp, _, _ = self._components(x, acp, xp)
        return _logsumexp(logp, xp)

    def log_prob(self, x: Array) -> Array:
        """Log density (nats) of the data at each row of ``x`` [B, D]."""
        return self.log_marginal(x, 1.0)

    def nll(self, x0: Array) -> Array:
        """Exact negative log-density of data points x0 [B, D] (nats per example)."""
        return -self.log_marginal(x0, 1.0)

    def score(self, x: Array) -> Array:
        """∇ log q(x) of the data at each row of ``x`` [B, D]: Σ_k r_k(x) (μ_k - x) / s_k²."""
        xp = get_namespace(x)
        self._check_rows(x)
        acp = _acp_column(1.0, x, xp)
        logp, diff, v = self._components(x, acp, xp)
        r = xp.exp(logp - _logsumexp(logp, xp)[:, None])[:, None, :]  # [B, 1, K]
        return -xp.sum(r * diff / v, axis=2)

    def _check_rows(self, x: Array) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [n, {self.dim}], got {tuple(x.shape)}")

    def _posterior(
        self, schedule: Any, x: Array, t: Array, xp: Any
    ) -> tuple[Array, Array, Array, Array, Array]:
        flat = xp.reshape(x, (x.shape[0], -1))
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"the oracle is {self.dim}-dimensional, got data with {flat.shape[1]} values"
            )
        acp = gather(schedule.alphas_cumprod, t, flat, xp=xp)  # [B, 1]
        logp, diff, v = self._components(flat, acp, xp)
        r = xp.exp(logp - _logsumexp(logp, xp)[:, None])[:, None, :]  # [B, 1, K]
        return flat, acp, r, diff, v

    def predict(self, schedule: Any, x_t: Array, t: Array, prediction: Prediction | str) -> Array:
        """The exact E[target | x_t] for ``prediction`` in {epsilon, x0, v}, shaped like x_t."""
        xp = get_namespace(x_t)
        _, acp, r, diff, v = self._posterior(schedule, x_t, t, xp)
        a = acp[:, :, None]
        eps = xp.sum(r * xp.sqrt(1.0 - a) * diff / v, axis=2)
        mu = _on(self.means, x_t, xp)
        s2 = _on(self.stds**2, x_t, xp)
        x0 = xp.sum(
            r * (xp.permute_dims(mu, (1, 0))[None, ...] + xp.sqrt(a) * s2 * diff / v), axis=2
        )
        pred = Prediction.parse(prediction)
        if pred is Prediction.EPSILON:
            out = eps
        elif pred is Prediction.X0:
            out = x0
        else:
            out = xp.sqrt(acp) * eps - xp.sqrt(1.0 - acp) * x0
        return xp.astype(xp.reshape(out, x_t.shape), x_t.dtype)

    def x0_variance(self, schedule: Any, x_t: Array, t: Array) -> Array:
        """Var[x_0 | x_t] per dimension, shaped like x_t."""
        xp = get_namespace(x_t)
        _, acp, r, diff, v = self._posterior(schedule, x_t, t, xp)
        a = acp[:, :, None]
        mu = _on(self.means, x_t, xp)
        s2 = _on(self.stds**2, x_t, xp)
        m_k = xp.permute_dims(mu, (1, 0))[None, ...] + xp.sqrt(a) * s2 * diff / v  # [B, D, K]
        var_k = s2 * (1.0 - a) / v  # [B, 1, K]
        mean = xp.sum(r * m_k, axis=2)
        second = xp.sum(r * (var_k + m_k**2), axis=2)
        return xp.astype(xp.reshape(xp.clip(second - mean**2, 0.0, None), x_t.shape), x_t.dtype)

    def denoiser(
        self,
        schedule: Any,
        prediction: Prediction | str = Prediction.EPSILON,
        variance: Variance | str = Variance.FIXED_SMALL,
    ) -> Callable[[Array, Array], Array]:
        """A denoiser callable ``(x_t, t) -> model_output`` with the exact prediction.

        With ``variance='learned'`` it appends the exact reverse log-variance
        log(β̃_t + c_t² Var[x_0 | x_t]) as the second half of the channels (axis 1).
        """
        variance = Variance.parse(variance)

        def fn(x_t: Array, t: Array) -> Array:
            xp = get_namespace(x_t)
            out = self.predict(schedule, x_t, t, prediction)
            if variance is Variance.LEARNED:
                c1 = gather(schedule.posterior_mean_coef1, t, x_t, xp=xp)
                pv = gather(schedule.posterior_variance, t, x_t, xp=xp)
                logvar = xp.log(pv + c1**2 * self.x0_variance(schedule, x_t, t))
                out = xp.concat([out, logvar], axis=1)
            elif variance.learned:
                raise ValueError(
                    "the oracle provides the exact variance as 'learned' (log σ²) only"
                )
            return out

        return fn

    def prior_mismatch_kl(self, schedule: Any) -> float:
        """KL(q(x_T) ‖ N(0, I)) for a single Gaussian (closed form, nats); 0 under zero terminal SNR."""
        if self.weights.shape[0] != 1:
            raise ValueError("the closed form needs a single Gaussian")
        a = float(schedule.alphas_cumprod[-1])
        v = a * self.stds[0] ** 2 + 1 - a
        m2 = a * float(np.sum(self.means[0] ** 2))
        return 0.5 * (self.dim * (v - 1 - math.log(v)) + m2)


def _dev(x: Array) -> Any:
    from array_api_compat import device

    return device(x)


def _on(a: np.ndarray, like: Array, xp: Any) -> Array:
    """A parameter array on ``like``'s backend and device (a writable copy: torch refuses to
    wrap read-only NumPy memory)."""
    return xp.asarray(np.array(a), device=_dev(like))


def _acp_column(acp: Array | float, x: Array, xp: Any) -> Array:
    if isinstance(acp, (int, float)):
        return xp.full((x.shape[0], 1), float(acp), dtype=x.dtype, device=_dev(x))
    return xp.reshape(xp.astype(acp, x.dtype), (x.shape[0], 1))


def _logsumexp(a: Array, xp: Any) -> Array:
    m = xp.max(a, axis=1)
    return m + xp.log(xp.sum(xp.exp(a - m[:, None]), axis=1))


def toy_mixture(name: str) -> GaussianMixture:
    """A preset Gaussian mixture, with values well inside ``[-1, 1]``.

    ``"ring8"``: 8 equally weighted 2-D Gaussians (std 0.05) evenly spaced on the circle of radius
    0.7. ``"bimodal1d"``: 1-D Gaussians at -0.5 and +0.5 (std 0.15), weights 0.3 and 0.7. An
    unknown name is a ``ValueError`` listing the known ones.

    Parameters
    ----------
    name : str
        ``"ring8"`` or ``"bimodal1d"`` (the keys of :data:`TOY_MIXTURES`).

    Returns
    -------
    GaussianMixture
        The mixture, in D = 2 or D = 1 dimensions.
    """
    if name == "ring8":
        angles = 2.0 * np.pi * np.arange(8) / 8
        means = 0.7 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return GaussianMixture(np.full(8, 1 / 8), means, np.full(8, 0.05))
    if name == "bimodal1d":
        return GaussianMixture(
            np.array([0.3, 0.7]), np.array([[-0.5], [0.5]]), np.array([0.15, 0.15])
        )
    raise ValueError(f"unknown toy mixture {name!r}; known: {list(TOY_MIXTURES)}")
