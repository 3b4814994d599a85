"""Noise schedules: immutable float64 tables of every coefficient the core uses.

Notation. Ho et al. write ᾱ_t = Π_{s≤t} (1 - β_s); the DDIM paper calls the same product α_t.
Code uses ``alphas_cumprod`` (ᾱ) only. Index convention: integer index ``t ∈ {0, …, T-1}`` stands
for the paper's step t+1, as in Ho et al.'s and improved-diffusion's code, so ``alphas_cumprod[0]``
is ᾱ_1 and ``alphas_cumprod_prev[0] = 1`` is ᾱ_0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any

import numpy as np

from ._checks import check_int
from ._enums import Spacing

__all__ = [
    "SCHEDULES",
    "Schedule",
    "get_schedule",
    "make_betas",
    "rescale_zero_terminal_snr",
    "select_timesteps",
    "space_timesteps",
]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=a.dtype)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Schedule:
    """An immutable diffusion schedule with all coefficient tables in float64.

    Build one with :func:`get_schedule` (by name) or ``Schedule(betas)``; respace it with
    :meth:`respace`. Every table is a read-only NumPy float64 array of length ``T``; the core gathers
    per-timestep values from them and casts to the data's dtype at the edge.

    Parameters
    ----------
    betas : array_like [T]
        β_1 … β_T, each in (0, 1). The last one may be exactly 1 (zero terminal SNR).
    name : str
        The schedule's name, for metadata (``"custom"`` for user-given betas).
    params : mapping
        The parameters it was built with (JSON-serialisable), for metadata.
    timestep_map : array_like of int [T], optional
        For a respaced schedule: index ``t`` of this schedule is index ``timestep_map[t]`` of the
        original one, which is what a denoiser trained on the original schedule must be given.
    alphas_exact : array_like [T], optional
        1 - β where it is known more precisely than 1 - β can be computed (:meth:`respace` passes
        ᾱ_k / ᾱ_j); not kept as a field.
    """

    betas: np.ndarray
    name: str = "custom"
    params: Mapping[str, Any] = field(default_factory=dict)
    timestep_map: np.ndarray | None = None
    #: 1 - β when it is known more precisely than 1 - β can be computed (respacing: ᾱ_k / ᾱ_j)
    alphas_exact: InitVar[np.ndarray | None] = None

    def __post_init__(self, alphas_exact: np.ndarray | None) -> None:
        b = np.asarray(self.betas)
        if b.dtype.kind not in "fiu":
            raise TypeError(f"betas must be real numbers, got dtype {b.dtype}")
        b = b.astype(np.float64)
        if b.ndim != 1:
            raise ValueError(f"betas must be 1-D, got shape {b.shape}")
        if b.shape[0] < 1:
            raise ValueError("a schedule needs T >= 1 steps, got T = 0")
        if not np.all(np.isfinite(b)):
            bad = b[~np.isfinite(b)][0]
            raise ValueError(
                f"betas must be finite, got {bad} at index {int(np.argmax(~np.isfinite(b)))}"
            )
        inner = b[:-1]
        if np.any(b <= 0) or np.any(inner >= 1) or b[-1] > 1:
            i = int(np.argmax((b <= 0) | np.append(inner >= 1, b[-1] > 1)))
            raise ValueError(
                f"betas must lie in (0, 1) (only the last may be exactly 1, for zero terminal SNR); "
                f"got β[{i}] = {float(b[i])!r}"
            )
        T = b.shape[0]
        tmap = np.arange(T, dtype=np.int64) if self.timestep_map is None else self.timestep_map
        tmap = np.asarray(tmap)
        if tmap.shape != (T,) or tmap.dtype.kind not in "iu":
            raise ValueError(
                f"timestep_map must be {T} integers, got shape {tmap.shape} {tmap.dtype}"
            )
        if T > 1 and np.any(np.diff(tmap) <= 0):
            raise ValueError("timestep_map must be strictly increasing")
        set_ = object.__setattr__
        set_(self, "betas", _readonly(b))
        set_(self, "timestep_map", _readonly(tmap.astype(np.int64)))
        set_(self, "params", dict(self.params))

        alphas = 1.0 - b if alphas_exact is None else np.asarray(alphas_exact, dtype=np.float64)
        if alphas.shape != b.shape or np.any(np.abs(alphas - (1.0 - b)) > 1e-12):
            raise ValueError("alphas_exact must equal 1 - betas")
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        with np.errstate(divide="ignore"):
            tables = {
                "alphas": alphas,
                "alphas_cumprod": acp,
                "alphas_cumprod_prev": acp_prev,
                "sqrt_alphas": np.sqrt(alphas),
                "sqrt_alphas_cumprod": np.sqrt(acp),
                "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
                "log_alphas_cumprod": np.log(acp),
                "log_one_minus_alphas_cumprod": np.log1p(-acp),
                "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
                "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1.0),
                "log_betas": np.log(b),
                # SNR(t) = ᾱ / (1 - ᾱ); log-SNR = log ᾱ - log(1 - ᾱ)
                "snr": acp / (1.0 - acp),
                "log_snr": np.log(acp) - np.log1p(-acp),
            }
        # Posterior q(x_{t-1} | x_t, x_0): variance β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t), zero at t=0.
        post_var = b * (1.0 - acp_prev) / (1.0 - acp)
        tables["posterior_variance"] = post_var
        # log β̃ clipped: the t=0 entry (log 0) is replaced by log β̃ at t=1 (Ho et al.'s code).
        clip_src = np.append(post_var[1], post_var[1:]) if T > 1 else np.array([b[0]])
        tables["posterior_log_variance_clipped"] = np.log(clip_src)
        tables["posterior_variance_clipped"] = clip_src
        tables["posterior_mean_coef1"] = b * np.sqrt(acp_prev) / (1.0 - acp)
        tables["posterior_mean_coef2"] = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
        # fixed_large variance: [β̃_1, β_2, …, β_T] (the first entry is β̃ so that L_0 is sensible).
        large = np.append(post_var[1], b[1:]) if T > 1 else b.copy()
        tables["fixed_large_variance"] = large
        tables["fixed_large_log_variance"] = np.log(large)
        for k, v in tables.items():
            set_(self, k, _readonly(v))

    # The tables, declared for type checkers and readers.
    alphas: np.ndarray = field(init=False, repr=False)
    alphas_cumprod: np.ndarray = field(init=False, repr=False)
    alphas_cumprod_prev: np.ndarray = field(init=False, repr=False)
    sqrt_alphas: np.ndarray = field(init=False, repr=False)
    sqrt_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    log_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    log_one_minus_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    sqrt_recip_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    sqrt_recipm1_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    log_betas: np.ndarray = field(init=False, repr=False)
    snr: np.ndarray = field(init=False, repr=False)
    log_snr: np.ndarray = field(init=False, repr=False)
    posterior_variance: np.ndarray = field(init=False, repr=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False, repr=False)
    posterior_variance_clipped: np.ndarray = field(init=False, repr=False)
    posterior_mean_coef1: np.ndarray = field(init=False, repr=False)
    posterior_mean_coef2: np.ndarray = field(init=False, repr=False)
    fixed_large_variance: np.ndarray = field(init=False, repr=False)
    fixed_large_log_variance: np.ndarray = field(init=False, repr=False)

    @property
    def num_timesteps(self) -> int:
        """T, the number of steps."""
        return int(self.betas.shape[0])

    @property
    def zero_terminal_snr(self) -> bool:
        """True when ᾱ at the last step is exactly 0 (x_T is pure noise)."""
        return bool(self.alphas_cumprod[-1] == 0.0)

    @property
    def is_respaced(self) -> bool:
        assert self.timestep_map is not None  # __post_init__ sets it
        return not np.array_equal(self.timestep_map, np.arange(self.num_timesteps))

    def respace(self, timesteps: Sequence[int] | np.ndarray) -> Schedule:
        """A schedule over a subsequence of this one's timestep indices (improved DDPM, §4).

        The new betas are recomputed from ᾱ: β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}} (with ᾱ_{k_{-1}} = 1),
        so the marginals q(x_t | x_0) at the kept steps are unchanged and the bound, learned
        variances and ancestral sampling work with fewer steps. ``timestep_map`` maps each new
        index to the index of the *original* schedule the denoiser was trained with.
        """
        k = np.asarray(timesteps)
        if k.ndim != 1 or k.size == 0:
            raise ValueError(
                f"respacing needs a non-empty 1-D list of timesteps, got shape {k.shape}"
            )
        if k.dtype.kind not in "iu":
            raise TypeError(f"respaced timesteps must be integers, got dtype {k.dtype}")
        T = self.num_timesteps
        if k.min() < 0 or k.max() >= T:
            bad = int(k.min()) if k.min() < 0 else int(k.max())
            raise ValueError(f"respaced timestep {bad} is out of range [0, {T - 1}]")
        if np.any(np.diff(k) <= 0):
            raise ValueError("respaced timesteps must be strictly increasing (sorted, no repeats)")
        assert self.timestep_map is not None  # __post_init__ sets it
        acp = self.alphas_cumprod[k]
        prev = np.append(1.0, acp[:-1])
        alphas = acp / prev  # exact ratios: 1 - (1 - r) would lose r's precision when r is small
        betas = 1.0 - alphas
        return Schedule(
            betas,
            name=self.name,
            params=self.params,
            timestep_map=self.timestep_map[k],
            alphas_exact=alphas,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: name and parameters, or the betas for a custom one.

        Only base schedules are described: a respaced one is rebuilt from its base with
        :meth:`respace`, so describe the base and the steps instead.
        """
        if self.is_respaced:
            raise ValueError(
                "to_dict describes base schedules only; describe the base and its steps"
            )
        d: dict[str, Any] = {
            "name": self.name,
            "params": dict(self.params),
            "T": self.num_timesteps,
        }
        if self.name == "custom":
            d["betas"] = [float(x) for x in self.betas]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schedule:
        """Inverse of :meth:`to_dict` (for the base, un-respaced schedule)."""
        if not isinstance(d, Mapping) or "name" not in d:
            raise ValueError(f"a schedule description needs a 'name', got {d!r}")
        if d["name"] == "custom":
            if "betas" not in d:
                raise ValueError("a custom schedule description needs its 'betas'")
            return cls(np.asarray(d["betas"], dtype=np.float64), name="custom")
        if "T" not in d:
            raise ValueError(f"schedule description {d!r} lacks 'T'")
        return get_schedule(d["name"], int(d["T"]), **dict(d.get("params", {})))

    def __repr__(self) -> str:
        extra = ", respaced" if self.is_respaced else ""
        return f"Schedule(name={self.name!r}, T={self.num_timesteps}, params={self.params}{extra})"


def make_betas(name: str, T: int, **params: Any) -> np.ndarray:
    """The betas of a named schedule. See :data:`SCHEDULES` for the names and their defaults.

    Parameters
    ----------
    name : str
        A key of :data:`SCHEDULES` (``"linear"``, ``"cosine"``, …).
    T : int
        The number of steps, at least 1.
    **params : float
        The schedule's parameters (``beta_start``, ``s``, …); the ones not given take their
        defaults, an unknown one is a ``ValueError`` naming it.

    Returns
    -------
    float64 array [T]
        β_1 … β_T, each in (0, 1) (a ``ValueError`` names the first that is not).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    T = check_int(T, "T", minimum=1)
    fn, defaults = SCHEDULES[name]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(
            f"schedule {name!r} takes {sorted(defaults)}, got unknown {sorted(unknown)}"
        )
    kw = {**defaults, **params}
    for key, value in params.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float, np.number))
        ):
            raise TypeError(f"schedule {name!r}: {key} must be a number, got {value!r}")
    betas = np.asarray(fn(int(T), **kw), dtype=np.float64)
    bad = ~np.isfinite(betas) | (betas <= 0) | (betas > 1) | np.append(betas[:-1] >= 1, False)
    if bad.any():
        i = int(np.argmax(bad))
        given = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "its defaults"
        raise ValueError(
            f"schedule {name!r} with {given} and T = {T} gives β[{i}] = {float(betas[i])!r}; "
            "every β must lie in (0, 1)"
        )
    return betas


def _linear(T: int, beta_start: float | None, beta_end: float | None) -> np.ndarray:
    # Ho et al.: 1e-4 .. 0.02 for T = 1000, scaled by 1000/T for other T (improved DDPM's code).
    scale = 1000.0 / T
    b0 = scale * 1e-4 if beta_start is None else beta_start
    b1 = scale * 0.02 if beta_end is None else beta_end
    if (beta_end is None and b1 >= 1) or (beta_start is None and b0 >= 1):
        raise ValueError(
            f"the linear schedule's default betas (1e-4 .. 0.02, scaled by 1000/T) exceed 1 for T = {T}; "
            "pass beta_start and beta_end explicitly"
        )
    return np.linspace(b0, b1, T, dtype=np.float64)


def _sqrt_linear(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # β_t = (linear interpolation of √β)²: Ho et al.'s "quad" and Stable Diffusion's "scaled_linear".
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2


def _cosine(T: int, s: float, max_beta: float) -> np.ndarray:
    # Nichol & Dhariwal eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2).
    t = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def _sigmoid_betas(
    T: int, beta_start: float, beta_end: float, low: float, high: float
) -> np.ndarray:
    # GeoDiff (Xu et al. 2022): β_t = σ(linspace(low, high)) · (β_end - β_start) + β_start.
    x = np.linspace(low, high, T, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def _sigmoid_alphas_cumprod(
    T: int, start: float, end: float, tau: float, max_beta: float
) -> np.ndarray:
    # Jabri et al. 2022 (RIN) / Chen 2023: ᾱ(t) = (σ((end)/τ) - σ((t(end-start)+start)/τ))
    #                                         / (σ(end/τ) - σ(start/τ)), t ∈ [0, 1].
    def sig(x: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))

    t = np.arange(T + 1, dtype=np.float64) / T
    v_start, v_end = sig(start / tau), sig(end / tau)
    acp = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)
    acp = np.clip(acp, 0.0, 1.0)
    return np.minimum(1.0 - acp[1:] / acp[:-1], max_beta)


def _constant(T: int, beta: float) -> np.ndarray:
    return np.full(T, beta, dtype=np.float64)


#: name -> (function, default parameters)
SCHEDULES: dict[str, tuple[Any, dict[str, Any]]] = {
    "linear": (_linear, {"beta_start": None, "beta_end": None}),
    "scaled_linear": (_sqrt_linear, {"beta_start": 0.00085, "beta_end": 0.012}),
    "quadratic": (_sqrt_linear, {"beta_start": 1e-4, "beta_end": 0.02}),
    "cosine": (_cosine, {"s": 0.008, "max_beta": 0.999}),
    "sigmoid_betas": (
        _sigmoid_betas,
        {"beta_start": 1e-4, "beta_end": 0.02, "low": -6.0, "high": 6.0},
    ),
    "sigmoid_alphas_cumprod": (
        _sigmoid_alphas_cumprod,
        {"start": -3.0, "end": 3.0, "tau": 1.0, "max_beta": 0.999},
    ),
    "constant": (_constant, {"beta": 0.01}),
}


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so that ᾱ_T = 0 exactly (Lin et al. 2023, Algorithm 1).

    √ᾱ is shifted so its last value is 0 and scaled so its first value is unchanged; the last
    beta becomes exactly 1.

    Parameters
    ----------
    betas : array_like [T]
        The betas to rescale; ᾱ must decrease over them.

    Returns
    -------
    float64 array [T]
        The rescaled betas, the last one exactly 1.
    """
    b = np.asarray(betas, dtype=np.float64)
    sqrt_acp = np.sqrt(np.cumprod(1.0 - b))
    first, last = sqrt_acp[0], sqrt_acp[-1]
    if not first > last:
        raise ValueError("zero-terminal-SNR rescaling needs ᾱ to decrease over the schedule")
    sqrt_acp = (sqrt_acp - last) * first / (first - last)
    acp = sqrt_acp**2
    out = 1.0 - acp / np.append(1.0, acp[:-1])
    out[-1] = 1.0
    return out


def get_schedule(name: str, T: int, *, zero_terminal_snr: bool = False, **params: Any) -> Schedule:
    """A named schedule with ``T`` steps.

    Names: ``linear`` (Ho et al.), ``scaled_linear`` (Stable Diffusion), ``quadratic`` (Ho et al.'s
    "quad"), ``cosine`` (Nichol & Dhariwal, s = 0.008, β clipped at 0.999), ``sigmoid_betas``
    (sigmoid on β, GeoDiff), ``sigmoid_alphas_cumprod`` (sigmoid on ᾱ, Jabri et al.), ``constant``.
    ``zero_terminal_snr=True`` applies Lin et al.'s rescaling so that ᾱ_T = 0.

    Parameters
    ----------
    name : str
        The schedule's name, one of the keys of :data:`SCHEDULES`.
    T : int
        The number of steps.
    zero_terminal_snr : bool
        Rescale the betas so that ᾱ_T = 0 (:func:`rescale_zero_terminal_snr`); needs T >= 2.
    **params : float
        The schedule's parameters (see :func:`make_betas`).

    Returns
    -------
    Schedule
        The schedule with its float64 tables, its name and the parameters it was built with.
    """
    betas = make_betas(name, T, **params)
    record = {k: v for k, v in params.items() if v is not None}
    if zero_terminal_snr:
        if T < 2:
            raise ValueError("zero terminal SNR needs T >= 2")
        betas = rescale_zero_terminal_snr(betas)
        record["zero_terminal_snr"] = True
    return Schedule(betas, name=name, params=record)


def space_timesteps(T: int, n: int) -> np.ndarray:
    """``n`` timestep indices spread evenly over [0, T-1], always including 0 and T-1.

    Parameters
    ----------
    T : int
        The number of steps of the schedule.
    n : int
        How many indices to take, 1 … T (one step takes T-1 alone).

    Returns
    -------
    int64 array [n]
        Increasing indices.
    """
    n = check_int(n, "the number of steps", minimum=1)
    if n > T:
        raise ValueError(f"cannot take {n} steps from a schedule of T = {T} (need 1 <= steps <= T)")
    if n == 1:
        return np.array([T - 1], dtype=np.int64)
    return np.round(np.linspace(0, T - 1, n)).astype(np.int64)


def select_timesteps(
    schedule: Schedule, n: int, spacing: Spacing | str = Spacing.EVEN, *, rho: float = 7.0
) -> np.ndarray:
    """``n`` of ``schedule``'s timestep indices (increasing, int64) to sample with ``n`` steps;
    ``schedule.respace(select_timesteps(schedule, n, spacing))`` is the schedule to sample on.

    - ``"even"``: evenly spaced indices, 0 and T-1 included (:func:`space_timesteps`);
    - ``"logsnr"``: targets uniform in log-SNR λ_t = log(ᾱ_t / (1 - ᾱ_t)) from λ_{T-1} to λ_0
      (DPM-Solver's steps uniform in log(α/σ) = λ/2);
    - ``"karras"``: Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} -
      σ_max^{1/ρ}))^ρ with σ_t = √((1 - ᾱ_t) / ᾱ_t), σ_max = σ_{T-1}, σ_min = σ_0, ρ = ``rho``.

    **Discrete time.** The model was trained at integer indices only, so each continuous target
    goes to the index whose log-SNR is nearest (the same as nearest in log σ); where two targets
    land on one index, the noisier one moves to the next free index above it. The ``n`` steps are
    then ``n`` distinct indices with 0 and T-1 always among them, and a solver uses the exact ᾱ of
    the index it hands the model: the model and the step never disagree about the noise level.

    **Zero terminal SNR** (ᾱ_{T-1} = 0, σ_max = ∞): index T-1 is kept as the first step and the
    other ``n - 1`` targets are spaced over indices T-2 … 0.

    Raises ``ValueError`` naming the value for an unknown spacing, ``n`` outside 1 … T or a ``rho``
    that is not a finite positive number.

    Parameters
    ----------
    schedule : Schedule
        The schedule the model was trained with.
    n : int
        The number of sampling steps, 1 … T.
    spacing : Spacing or str
        ``"even"``, ``"logsnr"`` or ``"karras"``.
    rho : float
        ρ of the Karras spacing (ignored by the others).

    Returns
    -------
    int64 array [n]
        ``n`` distinct increasing indices of ``schedule``, 0 and T-1 among them.
    """
    spacing = Spacing.parse(spacing)
    T = schedule.num_timesteps
    if spacing is Spacing.EVEN:
        return space_timesteps(T, n)
    n = check_int(n, "the number of steps", minimum=1)
    if n > T:
        raise ValueError(f"cannot take {n} steps from a schedule of T = {T} (need 1 <= steps <= T)")
    if isinstance(rho, bool) or not (isinstance(rho, (int, float)) and 0 < rho < math.inf):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    if n == T:
        return np.arange(T, dtype=np.int64)
    log_snr = schedule.log_snr
    top = T - 1 if np.isfinite(log_snr[-1]) else T - 2  # the noisiest index with a finite σ
    m = n if top == T - 1 else n - 1  # steps spaced over 0 … top
    if m == 0 or (m == 1 and top == T - 1):
        picked = np.array([top], dtype=np.int64)[:m]
    elif m == 1:
        picked = np.zeros(1, dtype=np.int64)
    else:
        lo_snr, hi_snr = log_snr[top], log_snr[0]
        frac = np.linspace(0.0, 1.0, m)  # 0 at the clean end (index 0)
        if spacing is Spacing.LOGSNR:
            targets = hi_snr + frac * (lo_snr - hi_snr)
        else:  # σ = e^{-λ/2}, spaced uniformly in σ^{1/ρ}
            s_min, s_max = np.exp(-0.5 * hi_snr / rho), np.exp(-0.5 * lo_snr / rho)
            targets = -2.0 * rho * np.log(s_min + frac * (s_max - s_min))
        picked = _distinct(_nearest(log_snr[: top + 1], targets), top + 1)
    if top != T - 1:
        picked = np.append(picked, T - 1)
    return picked.astype(np.int64)


def _nearest(log_snr: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target, the index of the nearest value of the decreasing ``log_snr``."""
    neg = -log_snr  # increasing, for searchsorted
    right = np.clip(np.searchsorted(neg, -targets), 1, len(neg) - 1)
    left = right - 1
    return np.where(np.abs(neg[left] + targets) <= np.abs(neg[right] + targets), left, right)


def _distinct(k: np.ndarray, size: int) -> np.ndarray:
    """Increasing indices ``k`` made strictly increasing within [0, size-1]: an index already
    taken moves up to the next free one, leaving room for those above it."""
    out = np.empty(len(k), dtype=np.int64)
    for i, ki in enumerate(k):
        low = out[i - 1] + 1 if i else 0
        out[i] = min(max(int(ki), low), size - len(k) + i)
    return out
