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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._array import Array, gather, get_namespace
from .reverse import Prediction, Variance

__all__ = ["GaussianMixtureOracle"]


@dataclass(frozen=True, eq=False)
class GaussianMixtureOracle:
    """The exact diffusion quantities of x_0 ~ Σ_k w_k N(μ_k, s_k² I) in D dimensions.

    Parameters
    ----------
    weights : [K]   positive, summing to 1
    means : [K, D]
    stds : [K]      positive (isotropic components)
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        m = np.asarray(self.means, dtype=np.float64)
        s = np.asarray(self.stds, dtype=np.float64)
        if w.ndim != 1 or m.ndim != 2 or s.shape != w.shape or m.shape[0] != w.shape[0]:
            raise ValueError(
                f"need weights [K], means [K, D], stds [K]; got {w.shape}, {m.shape}, {s.shape}"
            )
        if np.any(w <= 0) or abs(w.sum() - 1) > 1e-9 or np.any(s <= 0):
            raise ValueError("weights must be positive and sum to 1, stds positive")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "stds", s)

    @classmethod
    def gaussian(cls, mean: Any, std: float) -> GaussianMixtureOracle:
        """A single isotropic Gaussian N(mean, std² I)."""
        return cls(
            np.ones(1), np.asarray(mean, dtype=np.float64).reshape(1, -1), np.array([float(std)])
        )

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n float64 samples [n, D] from the data distribution."""
        k = rng.choice(self.weights.shape[0], size=n, p=self.weights)
        return self.means[k] + self.stds[k, None] * rng.standard_normal((n, self.dim))

    # -- the marginal q(x_t) ---------------------------------------------------------------
    def _components(self, x: Array, acp: Array, xp: Any):
        """log responsibilities' numerators, centred x, v_k for x [B, D] and ᾱ [B, 1]."""
        mu = xp.asarray(self.means, device=_dev(x))  # [K, D]
        s2 = xp.asarray(self.stds**2, device=_dev(x))  # [K]
        logw = xp.asarray(np.log(self.weights), device=_dev(x))
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
        acp = _acp_column(alphas_cumprod, x, xp)
        logp, _, _ = self._components(x, acp, xp)
        return _logsumexp(logp, xp)

    def nll(self, x0: Array) -> Array:
        """Exact negative log-density of data points x0 [B, D] (nats per example)."""
        return -self.log_marginal(x0, 1.0)

    def _posterior(self, schedule: Any, x: Array, t: Array, xp: Any):
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
        mu = xp.asarray(self.means, device=_dev(x_t))
        s2 = xp.asarray(self.stds**2, device=_dev(x_t))
        x0 = xp.sum(
            r * (xp.permute_dims(mu, (1, 0))[None, ...] + xp.sqrt(a) * s2 * diff / v), axis=2
        )
        pred = Prediction(prediction)
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
        mu = xp.asarray(self.means, device=_dev(x_t))
        s2 = xp.asarray(self.stds**2, device=_dev(x_t))
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
    ):
        """A denoiser callable ``(x_t, t) -> model_output`` with the exact prediction.

        With ``variance='learned'`` it appends the exact reverse log-variance
        log(β̃_t + c_t² Var[x_0 | x_t]) as the second half of the channels (axis 1).
        """
        variance = Variance(variance)

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

    def prior_mismatch_kl(self, schedule: Any, num_samples: int = 0) -> float:
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


def _acp_column(acp: Array | float, x: Array, xp: Any) -> Array:
    if isinstance(acp, (int, float)):
        return xp.full((x.shape[0], 1), float(acp), dtype=x.dtype, device=_dev(x))
    return xp.reshape(xp.astype(acp, x.dtype), (x.shape[0], 1))


def _logsumexp(a: Array, xp: Any) -> Array:
    m = xp.max(a, axis=1)
    return m + xp.log(xp.sum(xp.exp(a - m[:, None]), axis=1))
