"""One frozen value for a diffusion's settings, and the application API over the core.

:class:`Diffusion` holds everything that says how a denoiser's output becomes a model of the data:
the schedule (built once, float64), what the network predicts, how the reverse variance is chosen,
the decoder of L_0, the clipping of x̂_0, the data range and number of levels, and the image shape.
The settings are parsed once where they enter (the command line, a config file, a checkpoint, the
metadata of an ONNX file, a diffusers scheduler config) and then travel whole: the trainer, the
exporter, the ONNX runtime, the evaluation and the demo take one ``Diffusion``.

Its methods call the core's free functions (:func:`refdiff.q_sample`,
:func:`refdiff.training_losses`, :func:`refdiff.variational_bound`, :func:`refdiff.sample`, ...)
with these settings; the free functions keep their explicit keyword arguments, for validating
another implementation against them (docs/validate.md). It is improved-diffusion's
``GaussianDiffusion`` as an immutable value, with the settings as enums.

The JSON form (:meth:`Diffusion.to_dict`) is what checkpoints and ONNX metadata store::

    {"schedule": {"name": "linear", "params": {}, "T": 200}, "prediction": "v",
     "variance": "learned_range", "decoder": "discretized", "clip_denoised": true,
     "data_range": [-1.0, 1.0], "num_bins": 256, "image_shape": [1, 8, 8]}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._array import Array, Timesteps
from ._checks import check_bool, check_int
from ._enums import DEFAULT_CLIP_DENOISED, Decoder, LossType, Prediction, Spacing, Variance
from .bound import BoundResult, MonteCarloBound, variational_bound, variational_bound_mc
from .forward import q_sample
from .losses import LossTerms, check_data_range, check_num_bins, training_losses
from .plans import Plan
from .reverse import PMeanVariance, check_zero_terminal_snr, p_mean_variance
from .sampler_loop import Callback
from .sampler_registry import SamplerChoice, SamplerSpec
from .samplers import DEFAULT_SAMPLER, SAMPLERS, get_sampler
from .schedules import Schedule, get_schedule, select_timesteps

__all__ = ["Diffusion", "check_steps"]


def check_steps(steps: Any, num_timesteps: int) -> int:
    """``steps`` as an int if it is a number of sampling steps a model of T = ``num_timesteps``
    can take (1 … T); the error says what to choose."""
    steps = check_int(steps, "steps", minimum=1)
    if steps > num_timesteps:
        raise ValueError(
            f"cannot sample with {steps} steps: the model was trained with T = {num_timesteps} "
            f"steps (choose 1 <= steps <= {num_timesteps})"
        )
    return steps


def _default_schedule() -> Schedule:
    return get_schedule("linear", 1000)


@dataclass(frozen=True, eq=False)
class Diffusion:
    """The settings of a diffusion model: one immutable value, parsed once.

    Parameters
    ----------
    schedule : Schedule or mapping
        The base schedule the denoiser was trained with (not a respaced one), or its description
        (``Schedule.to_dict()``: name, params and T, or the betas), built here once.
    prediction : Prediction or str
        What the denoiser's mean channels predict: ``epsilon``, ``x0`` or ``v``.
    variance : Variance or str
        ``fixed_small``, ``fixed_large``, ``learned`` or ``learned_range``.
    image_shape : (C, H, W)
        The shape of one example.
    data_range : (lo, hi)
        The range of the data (images: (-1, 1)).
    clip_denoised : bool
        Clip x̂_0 to ``data_range`` when sampling and scoring (default True, as everywhere in
        refdiff: :data:`refdiff._enums.DEFAULT_CLIP_DENOISED`).
    decoder : Decoder or str
        The decoder of L_0: ``discretized`` (data on ``num_bins`` levels) or ``gaussian``.
    num_bins : int
        Levels of the discretized data (256 for 8-bit images).

    Raises
    ------
    ValueError, TypeError
        An unknown name, a bad shape or range, a respaced schedule, or zero terminal SNR with an
        ε-prediction (which cannot recover x_0 at the last step).
    """

    schedule: Schedule = field(default_factory=_default_schedule)
    prediction: Prediction = Prediction.EPSILON
    variance: Variance = Variance.FIXED_SMALL
    image_shape: tuple[int, int, int] = (3, 32, 32)
    data_range: tuple[float, float] = (-1.0, 1.0)
    clip_denoised: bool = DEFAULT_CLIP_DENOISED
    decoder: Decoder = Decoder.DISCRETIZED
    num_bins: int = 256
    # respaced schedules already built, by steps and spacing (their device tables are cached too)
    _respaced: dict[tuple[int, Spacing], Schedule] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        sched = self.schedule
        if isinstance(sched, Mapping):
            sched = Schedule.from_dict(sched)
        if not isinstance(sched, Schedule):
            raise TypeError(
                f"schedule must be a Schedule or its description, got {type(sched).__name__}"
            )
        if sched.is_respaced:
            raise ValueError(
                "the settings hold the base schedule the model was trained with, not a respaced "
                "one; respace when sampling (Diffusion.sampling_schedule)"
            )
        set_(self, "schedule", sched)
        set_(self, "prediction", Prediction.parse(self.prediction))
        set_(self, "variance", Variance.parse(self.variance))
        set_(self, "decoder", Decoder.parse(self.decoder))
        try:
            shape = tuple(int(s) for s in self.image_shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape!r}"
            ) from None
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}"
            )
        set_(self, "image_shape", shape)
        set_(self, "data_range", check_data_range(self.data_range))
        set_(self, "clip_denoised", check_bool(self.clip_denoised, "clip_denoised"))
        set_(self, "num_bins", check_num_bins(self.num_bins))
        check_zero_terminal_snr(sched.zero_terminal_snr, self.prediction)

    # -- what the settings imply -------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """T, the number of steps the model was trained with."""
        return self.schedule.num_timesteps

    @property
    def out_channels(self) -> int:
        """Channels the denoiser outputs: C, or 2C with a learned variance."""
        c = self.image_shape[0]
        return 2 * c if self.variance.learned else c

    def replace(self, **changes: Any) -> Diffusion:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def sampling_schedule(
        self, steps: int | None = None, spacing: Spacing | str = Spacing.EVEN
    ) -> Schedule:
        """The schedule to sample with: the base one (``steps`` None or T) or respaced to
        ``steps`` of the training timesteps picked by ``spacing`` (:func:`refdiff.select_timesteps`:
        ``even``, improved DDPM's respacing; ``logsnr``; ``karras``)."""
        T = self.num_timesteps
        spacing = Spacing.parse(spacing)
        if steps is None:
            return self.schedule
        steps = check_steps(steps, T)
        if steps == T:
            return self.schedule
        key = (steps, spacing)
        if key not in self._respaced:
            self._respaced[key] = self.schedule.respace(
                select_timesteps(self.schedule, steps, spacing)
            )
        return self._respaced[key]

    def timesteps(self, t: Any, xp: Any, device: Any = None) -> Timesteps:
        """Host integer timesteps ``t`` [B], checked here once and moved to ``device``: pass the
        result to the methods below and they do not check the values again (no device
        synchronisation in a training step). ``.array`` is what the denoiser takes."""
        return Timesteps.from_host(t, self.num_timesteps, xp, device)

    # -- the core with these settings --------------------------------------------------------

    def q_sample(self, x_start: Array, t: Any, noise: Array) -> Array:
        """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε (:func:`refdiff.q_sample`)."""
        return q_sample(self.schedule, x_start, t, noise)

    def p_mean_variance(self, model_output: Array, x_t: Array, t: Any) -> PMeanVariance:
        """p_θ(x_{t-1} | x_t) from the denoiser's output (:func:`refdiff.p_mean_variance`)."""
        return p_mean_variance(
            self.schedule,
            model_output,
            x_t,
            t,
            prediction=self.prediction,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
            data_range=self.data_range,
        )

    def training_losses(
        self,
        model_output: Array,
        x_start: Array,
        x_t: Array,
        t: Any,
        noise: Array,
        *,
        loss_type: LossType | str = LossType.SIMPLE,
        lambda_vlb: float = 0.001,
    ) -> LossTerms:
        """The per-example training loss (:func:`refdiff.training_losses`)."""
        return training_losses(
            self.schedule,
            model_output,
            x_start,
            x_t,
            t,
            noise,
            loss_type=loss_type,
            prediction=self.prediction,
            variance=self.variance,
            decoder=self.decoder,
            data_range=self.data_range,
            num_bins=self.num_bins,
            lambda_vlb=lambda_vlb,
        )

    def _bound_settings(self) -> dict[str, Any]:
        return {
            "prediction": self.prediction,
            "variance": self.variance,
            "decoder": self.decoder,
            "clip_denoised": self.clip_denoised,
            "data_range": self.data_range,
            "num_bins": self.num_bins,
        }

    def bound(
        self,
        denoiser: Callable[[Array, Array], Array],
        x_start: Array,
        *,
        seed: int = 0,
        sample_indices: Array | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BoundResult:
        """The full variational bound over all T steps (:func:`refdiff.variational_bound`)."""
        return variational_bound(
            self.schedule,
            denoiser,
            x_start,
            seed=seed,
            sample_indices=sample_indices,
            progress=progress,
            **self._bound_settings(),
        )

    def bound_mc(
        self,
        denoiser: Callable[[Array, Array], Array],
        x_start: Array,
        *,
        num_draws: int = 16,
        timestep_probs: Any = None,
        seed: int = 0,
        sample_indices: Array | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> MonteCarloBound:
        """An unbiased Monte-Carlo estimate of the bound (:func:`refdiff.variational_bound_mc`)."""
        return variational_bound_mc(
            self.schedule,
            denoiser,
            x_start,
            num_draws=num_draws,
            timestep_probs=timestep_probs,
            seed=seed,
            sample_indices=sample_indices,
            progress=progress,
            **self._bound_settings(),
        )

    def choose_sampler(
        self,
        sampler: str | SamplerSpec | SamplerChoice | None = None,
        steps: int | None = None,
        spacing: Spacing | str | None = None,
        **options: Any,
    ) -> SamplerChoice:
        """The sampler ``sampler`` (default :data:`refdiff.samplers.DEFAULT_SAMPLER`) for this
        model, checked once: ``steps`` between 1 and T (default: the sampler's own
        ``default_steps``, at most T; all T for DDPM), ``spacing`` (default: the sampler's), and
        its ``options`` with their defaults filled in. A :class:`SamplerChoice` given with
        nothing else is returned as it is."""
        if isinstance(sampler, SamplerChoice):
            if steps is not None or spacing is not None or options:
                raise TypeError("a SamplerChoice comes whole: give no steps, spacing or options")
            return sampler
        spec = get_sampler(DEFAULT_SAMPLER if sampler is None else sampler)
        T = self.num_timesteps
        if steps is None:
            steps = T if spec.default_steps is None else min(spec.default_steps, T)
        return SamplerChoice(
            spec,
            check_steps(steps, T),
            spec.spacing if spacing is None else Spacing.parse(spacing),
            spec.check_options(options),
            zero_terminal_snr=self.schedule.zero_terminal_snr,
        )

    def plan(
        self,
        sampler: str | SamplerSpec | SamplerChoice | None = None,
        steps: int | None = None,
        spacing: Spacing | str | None = None,
        **options: Any,
    ) -> Plan:
        """The :class:`~refdiff.plans.Plan` of ``sampler`` with these settings (as
        :meth:`choose_sampler`); a ``ValueError`` for a sampler that has none (Heun)."""
        choice = self.choose_sampler(sampler, steps, spacing, **options)
        if choice.spec.plan is None:
            with_plan = [n for n, s in SAMPLERS.items() if s.plan is not None]
            raise ValueError(
                f"the {choice.name!r} sampler has no plan (its update is not a fixed linear "
                f"combination); samplers with one: {with_plan}"
            )
        return choice.spec.plan(
            self.sampling_schedule(choice.steps, choice.spacing),
            prediction=self.prediction,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
            data_range=self.data_range,
            **choice.options,
        )

    def sample(
        self,
        denoiser: Callable[[Array, Array], Array],
        n: int,
        *,
        sampler: str | SamplerSpec | SamplerChoice | None = None,
        steps: int | None = None,
        spacing: Spacing | str | None = None,
        seed: int = 0,
        sample_indices: Array | None = None,
        xp: Any = None,
        dtype: Any = None,
        device: Any = None,
        callback: Callback | None = None,
        x_T: Array | None = None,
        noise: Callable[[int, tuple[int, ...]], Array] | None = None,
        fused: bool | None = None,
        **options: Any,
    ) -> Array:
        """``n`` samples ``[n, *image_shape]`` with the sampler ``sampler`` (default
        :data:`refdiff.samplers.DEFAULT_SAMPLER`) over ``steps`` training timesteps picked by
        ``spacing`` (defaults: the sampler's; :meth:`choose_sampler`), with its ``options``
        (``eta`` for DDIM, ...). The run settings (seed, sample_indices, xp, dtype, device,
        callback, x_T, noise, fused) are those of :func:`refdiff.ddpm_sample`."""
        choice = self.choose_sampler(sampler, steps, spacing, **options)
        return choice.spec.function(
            self.sampling_schedule(choice.steps, choice.spacing),
            denoiser,
            (check_int(n, "the number of samples n", minimum=1), *self.image_shape),
            prediction=self.prediction,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
            data_range=self.data_range,
            seed=seed,
            sample_indices=sample_indices,
            xp=xp,
            dtype=dtype,
            device=device,
            callback=callback,
            x_T=x_T,
            noise=noise,
            fused=fused,
            **choice.options,
        )

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable description; :meth:`from_dict` inverts it."""
        return {
            "schedule": self.schedule.to_dict(),
            "prediction": self.prediction.value,
            "variance": self.variance.value,
            "image_shape": list(self.image_shape),
            "data_range": list(self.data_range),
            "clip_denoised": self.clip_denoised,
            "decoder": self.decoder.value,
            "num_bins": self.num_bins,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diffusion:
        """Settings from their description; missing keys take their defaults, unknown keys are a
        ``ValueError`` naming them."""
        if not isinstance(d, Mapping):
            raise TypeError(f"diffusion settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown diffusion settings keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Diffusion:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"diffusion settings are not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Diffusion):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        s = self.schedule
        return (
            f"Diffusion(schedule={s.name!r} T={s.num_timesteps}, prediction={self.prediction.value!r}, "
            f"variance={self.variance.value!r}, image_shape={self.image_shape}, "
            f"data_range={self.data_range}, clip_denoised={self.clip_denoised}, "
            f"decoder={self.decoder.value!r}, num_bins={self.num_bins})"
        )
