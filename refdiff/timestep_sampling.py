"""Timestep samplers for training: uniform, and improved DDPM's loss-second-moment resampler.

A sampler draws the timestep index of each training example and the importance weight that keeps
the loss an unbiased estimate of the uniform-t objective: with p(t) the sampling probabilities,
the weight of an example drawn at t is w(t) = 1 / (T p(t)), so that

    E_{t~p}[w(t) L_t] = Σ_t p(t) L_t / (T p(t)) = (1/T) Σ_t L_t,

the objective under uniform t, whatever p is (as long as every p(t) > 0).

:class:`LossSecondMomentSampler` is the resampler of Nichol & Dhariwal (2021, §3.3, the
``LossSecondMomentResampler`` of improved-diffusion): p(t) ∝ sqrt(E[L_t²]) over the last
``history`` losses seen at each t, mixed with a little of the uniform distribution, and uniform
until every t has ``history`` losses. It reduces the variance of the L_vlb objective a lot.

Host-side NumPy only (no torch): the trainer draws timesteps on the host from a seeded
``numpy.random.Generator`` so a run is repeatable and the draws do not depend on the device.
Both samplers' states are JSON-serialisable (``state_dict`` / ``load_state_dict``), so they ride in
a checkpoint's ``state.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._checks import check_int

__all__ = [
    "TIMESTEP_SAMPLERS",
    "LossSecondMomentSampler",
    "TimestepSampler",
    "UniformSampler",
    "make_timestep_sampler",
]


def _check_T(num_timesteps: object) -> int:
    return check_int(num_timesteps, "num_timesteps", minimum=1)


class TimestepSampler:
    """Base class: subclasses define :meth:`probs`; sampling and weighting are shared."""

    kind = "base"

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = _check_T(num_timesteps)

    def probs(self) -> np.ndarray:
        """p(t) for t = 0 … T-1, float64 [T], positive and summing to 1."""
        raise NotImplementedError

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch`` timesteps from p and their importance weights.

        Parameters
        ----------
        batch : int
            Number of timesteps to draw.
        rng : numpy.random.Generator
            The host generator; exactly one ``rng.choice`` call is made, whatever the state of
            the sampler, so the generator advances the same way on every process of a run.

        Returns
        -------
        t : int64 [batch]
            Timestep indices.
        weights : float64 [batch]
            1 / (T p(t)): multiply the per-example losses by them for an unbiased estimate of the
            uniform-t objective.
        """
        batch = check_int(batch, "batch", minimum=0)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        p = self.probs()
        t = rng.choice(self.num_timesteps, size=int(batch), p=p).astype(np.int64)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t, weights

    def update(self, t: np.ndarray, losses: np.ndarray) -> None:
        """Record the per-example losses observed at timesteps ``t`` (no-op for uniform)."""
        _check_update(self.num_timesteps, t, losses)

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description of the sampler and its state."""
        return {"kind": self.kind, "num_timesteps": self.num_timesteps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the kind and T must match this sampler)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"sampler state must be a mapping, got {type(state).__name__}")
        if state.get("kind") != self.kind:
            raise ValueError(
                f"sampler state is for a {state.get('kind')!r} sampler, not {self.kind!r}"
            )
        if state.get("num_timesteps") != self.num_timesteps:
            raise ValueError(
                f"sampler state has T = {state.get('num_timesteps')}, this sampler T = "
                f"{self.num_timesteps}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.num_timesteps})"


def _check_update(T: int, t: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t)
    losses = np.asarray(losses, dtype=np.float64)
    if t.ndim != 1 or losses.shape != t.shape:
        raise ValueError(
            f"t and losses must be 1-D of one length, got shapes {t.shape} and {losses.shape}"
        )
    if t.size and t.dtype.kind not in "iu":
        raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= T):
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got [{t.min()}, {t.max()}]")
    if not np.all(np.isfinite(losses)):
        raise ValueError("losses must be finite (the training diverged?)")
    return t.astype(np.int64), losses


class UniformSampler(TimestepSampler):
    """p(t) = 1/T: every weight is 1 (Ho et al. 2020)."""

    kind = "uniform"

    def probs(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)


class LossSecondMomentSampler(TimestepSampler):
    """Importance sampling by the loss's second moment (Nichol & Dhariwal 2021, §3.3).

    p(t) ∝ sqrt(mean of the last ``history`` values of L_t²), mixed as
    ``(1 - uniform_prob) p + uniform_prob / T`` so that every t keeps a positive probability.
    Until every t has ``history`` recorded losses, p is uniform.

    Parameters
    ----------
    num_timesteps : int
        T.
    history : int
        Losses remembered per timestep (improved DDPM: 10).
    uniform_prob : float
        Weight of the uniform distribution in the mixture, in (0, 1] (improved DDPM: 0.001).
    """

    kind = "loss_second_moment"

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        history = check_int(history, "history", minimum=1)
        if not isinstance(uniform_prob, (int, float)) or not 0.0 < float(uniform_prob) <= 1.0:
            raise ValueError(f"uniform_prob must lie in (0, 1], got {uniform_prob!r}")
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self._losses = np.zeros((self.num_timesteps, self.history), dtype=np.float64)
        self._counts = np.zeros(self.num_timesteps, dtype=np.int64)

    @property
    def warmed_up(self) -> bool:
        """True once every timestep has ``history`` recorded losses."""
        return bool(np.all(self._counts == self.history))

    def probs(self) -> np.ndarray:
        T = self.num_timesteps
        if not self.warmed_up:
            return np.full(T, 1.0 / T)
        w = np.sqrt(np.mean(self._losses**2, axis=-1))
        total = w.sum()
        if not total > 0:  # every recorded loss is zero: nothing to prefer
            return np.full(T, 1.0 / T)
        p = w / total * (1.0 - self.uniform_prob) + self.uniform_prob / T
        return p / p.sum()

    def update(self, t: np.ndarray, losses: np.ndarray) -> None:
        """Append each loss to its timestep's history (the oldest one drops out when full).

        Losses are taken in order, so a process that sees the whole global batch in the same
        order as every other process keeps the same state.
        """
        t, losses = _check_update(self.num_timesteps, t, losses)
        for ti, li in zip(t.tolist(), losses.tolist(), strict=True):
            n = self._counts[ti]
            if n == self.history:
                self._losses[ti, :-1] = self._losses[ti, 1:]
                self._losses[ti, -1] = li
            else:
                self._losses[ti, n] = li
                self._counts[ti] = n + 1

    def state_dict(self) -> dict[str, Any]:
        d = super().state_dict()
        d.update(
            history=self.history,
            uniform_prob=self.uniform_prob,
            losses=self._losses.tolist(),
            counts=self._counts.tolist(),
        )
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("history") != self.history or state.get("uniform_prob") != self.uniform_prob:
            raise ValueError(
                f"sampler state has history={state.get('history')}, "
                f"uniform_prob={state.get('uniform_prob')}; this sampler has "
                f"history={self.history}, uniform_prob={self.uniform_prob}"
            )
        losses = np.asarray(state.get("losses"), dtype=np.float64)
        counts = np.asarray(state.get("counts"), dtype=np.int64)
        if losses.shape != self._losses.shape or counts.shape != self._counts.shape:
            raise ValueError(
                f"sampler state arrays have shapes {losses.shape}, {counts.shape}; expected "
                f"{self._losses.shape}, {self._counts.shape}"
            )
        if np.any(counts < 0) or np.any(counts > self.history):
            raise ValueError(f"sampler state counts must lie in [0, {self.history}]")
        self._losses = losses.copy()
        self._counts = counts.copy()

    def __repr__(self) -> str:
        return (
            f"LossSecondMomentSampler(T={self.num_timesteps}, history={self.history}, "
            f"uniform_prob={self.uniform_prob}, warmed_up={self.warmed_up})"
        )


#: name -> sampler class
TIMESTEP_SAMPLERS: dict[str, type[TimestepSampler]] = {
    UniformSampler.kind: UniformSampler,
    LossSecondMomentSampler.kind: LossSecondMomentSampler,
}


def make_timestep_sampler(name: str, num_timesteps: int, **kwargs: Any) -> TimestepSampler:
    """The sampler called ``name`` (``"uniform"`` or ``"loss_second_moment"``) for T steps."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(
            f"unknown timestep sampler {name!r}; choose from {sorted(TIMESTEP_SAMPLERS)}"
        )
    return TIMESTEP_SAMPLERS[name](num_timesteps, **kwargs)
