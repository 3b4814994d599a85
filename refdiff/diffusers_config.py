"""diffusers' formats in, without diffusers or torch: a scheduler config as :class:`Diffusion`
settings, and a pipeline or UNet folder read down to what refdiff needs to load it.

A diffusers DDPM pipeline folder holds ``model_index.json``, ``unet/config.json`` with
``unet/diffusion_pytorch_model.safetensors``, and ``scheduler/scheduler_config.json``. This module
reads the JSON files only (the weights are loaded by :mod:`refdiff.export.diffusers`, on the
torch side) and maps the scheduler config onto a :class:`Diffusion`, key by key, as the table of
docs/diffusers.md says:

- every key of ``DDPMScheduler`` and ``DDIMScheduler`` (diffusers 0.30 and later) is either
  honoured exactly, or refused with a ``ValueError`` naming it (``thresholding=True``, a
  ``beta_schedule`` refdiff does not have, a clip range other than the data range, ...), or,
  where refdiff's sampling stays correct but differs from what diffusers would do with the same
  key (its ``timestep_spacing`` when sampling with fewer steps, ``set_alpha_to_one=False``, ...),
  reported as a *note*: :attr:`DiffusersSettings.notes`, issued as a
  :class:`DiffusersOptionWarning` by :func:`diffusion_from_scheduler_config`;
- a key neither class takes is an error, never dropped.

The schedules are diffusers' formulas evaluated in float64 (diffusers evaluates them in float32;
docs/conformance.md measures the difference): ``linear`` and ``scaled_linear`` are refdiff's
schedules of those names with diffusers' ``beta_start``/``beta_end``, ``squaredcos_cap_v2`` is
refdiff's ``cosine`` (s = 0.008, β capped at 0.999: the same formula), ``sigmoid`` is
``sigmoid_betas`` (σ(linspace(-6, 6, T)) scaled to [β_start, β_end]), ``trained_betas`` a custom
schedule with exactly those betas, and ``rescale_betas_zero_snr`` Lin et al.'s rescaling, which
refdiff and diffusers both implement as Algorithm 1 of the paper.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._enums import Prediction, Variance
from .schedules import Schedule, get_schedule, rescale_zero_terminal_snr
from .settings import Diffusion

__all__ = [
    "PIPELINE_CLASSES",
    "SCHEDULER_CLASSES",
    "DiffusersFolder",
    "DiffusersOptionWarning",
    "DiffusersSettings",
    "diffusion_from_scheduler_config",
    "is_diffusers_folder",
    "read_diffusers_folder",
    "read_scheduler_config",
    "unet_image_shape",
]

#: Scheduler classes whose configs map onto refdiff's settings.
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
#: Unconditional pixel-space pipelines of one ``unet`` and one ``scheduler``.
PIPELINE_CLASSES = ("DDPMPipeline", "DDIMPipeline")
#: The one model class refdiff loads: diffusers' unconditional U-Net.
UNET_CLASS = "UNet2DModel"

# The keys each scheduler class takes, with diffusers' defaults (the same in 0.30 ... 0.42).
_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
_DEFAULTS = {
    "DDPMScheduler": {**_COMMON, "variance_type": "fixed_small"},
    "DDIMScheduler": {**_COMMON, "set_alpha_to_one": True},
}

_PREDICTIONS = {
    "epsilon": Prediction.EPSILON,
    "sample": Prediction.X0,
    "v_prediction": Prediction.V,
}
_VARIANCES = {
    "fixed_small": Variance.FIXED_SMALL,
    "fixed_small_log": Variance.FIXED_SMALL,  # the same σ² = β̃_t, stepped as exp(½ log β̃_t)
    "fixed_large": Variance.FIXED_LARGE,
    "fixed_large_log": Variance.FIXED_LARGE,
    "learned": Variance.LEARNED,  # the UNet outputs σ²; the exported graph outputs log σ²
    "learned_range": Variance.LEARNED_RANGE,
}
_SPACINGS = ("linspace", "leading", "trailing")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


class DiffusersOptionWarning(UserWarning):
    """A diffusers scheduler option that refdiff's sampling does not follow, where sampling stays
    correct (docs/diffusers.md lists each); options it cannot honour at all are errors."""


@dataclass(frozen=True)
class DiffusersSettings:
    """A diffusers scheduler config read as refdiff settings.

    Attributes
    ----------
    diffusion : Diffusion
        The settings: schedule, prediction, variance, clipping, image shape.
    scheduler_class : str
        ``DDPMScheduler`` or ``DDIMScheduler``.
    config : dict
        The config with every key the class takes (diffusers' default where it was missing).
    variance_is_sigma2 : bool
        diffusers' ``learned`` variance: the UNet's variance channels are σ² itself (diffusers
        steps with their square root), where refdiff's ``learned`` takes log σ²; the exported
        model applies the log.
    notes : tuple of str
        The options refdiff's sampling does not follow, each a sentence (empty when it follows
        them all).
    """

    diffusion: Diffusion
    scheduler_class: str
    config: dict[str, Any]
    variance_is_sigma2: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | Mapping[str, Any]) -> None:
    if value not in choices:
        raise ValueError(
            f"scheduler config: {key} {value!r} is not supported; refdiff maps "
            f"{sorted(choices) if isinstance(choices, Mapping) else list(choices)}"
        )


def _check_types(c: Mapping[str, Any]) -> None:
    for key in ("clip_sample", "thresholding", "rescale_betas_zero_snr", "set_alpha_to_one"):
        if key in c and not isinstance(c[key], bool):
            raise TypeError(f"scheduler config: {key} must be true or false, got {c[key]!r}")
    for key in ("num_train_timesteps", "steps_offset"):
        if not _is_int(c[key]):
            raise TypeError(f"scheduler config: {key} must be an integer, got {c[key]!r}")
    if c["num_train_timesteps"] < 1:
        raise ValueError(
            f"scheduler config: num_train_timesteps must be >= 1, got {c['num_train_timesteps']}"
        )
    for key in ("beta_start", "beta_end", "clip_sample_range"):
        if not _is_number(c[key]):
            raise TypeError(f"scheduler config: {key} must be a finite number, got {c[key]!r}")


def _schedule(c: Mapping[str, Any]) -> Schedule:
    T = c["num_train_timesteps"]
    ztsnr = c["rescale_betas_zero_snr"]
    betas = c["trained_betas"]
    try:
        if betas is not None:
            # diffusers takes trained_betas over beta_schedule, beta_start and beta_end.
            if isinstance(betas, np.ndarray) and betas.ndim == 1:
                betas = betas.tolist()  # an in-memory scheduler.config may hold an array
            if not isinstance(betas, (list, tuple)) or not all(_is_number(b) for b in betas):
                raise TypeError(
                    f"scheduler config: trained_betas must be a list of numbers, got {betas!r}"
                )
            if len(betas) != T:
                raise ValueError(
                    f"scheduler config: trained_betas has {len(betas)} values but "
                    f"num_train_timesteps is {T}"
                )
            values = [float(b) for b in betas]
            if ztsnr:
                if T < 2:
                    raise ValueError("zero terminal SNR needs T >= 2")
                values = list(rescale_zero_terminal_snr(np.asarray(values)))
            return Schedule(np.asarray(values), name="custom")
        name = c["beta_schedule"]
        _check_choice("beta_schedule", name, _BETA_SCHEDULES)
        lo, hi = float(c["beta_start"]), float(c["beta_end"])
        if name == "linear":
            return get_schedule("linear", T, zero_terminal_snr=ztsnr, beta_start=lo, beta_end=hi)
        if name == "scaled_linear":
            return get_schedule(
                "scaled_linear", T, zero_terminal_snr=ztsnr, beta_start=lo, beta_end=hi
            )
        if name == "squaredcos_cap_v2":
            return get_schedule("cosine", T, zero_terminal_snr=ztsnr, s=0.008, max_beta=0.999)
        return get_schedule(
            "sigmoid_betas",
            T,
            zero_terminal_snr=ztsnr,
            beta_start=lo,
            beta_end=hi,
            low=-6.0,
            high=6.0,
        )
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(
            msg if msg.startswith("scheduler config") else f"scheduler config: {msg}"
        ) from None


def _notes(cls: str, c: Mapping[str, Any]) -> list[str]:
    notes = []
    if c["timestep_spacing"] != "linspace":
        notes.append(
            f"timestep_spacing {c['timestep_spacing']!r}: with fewer steps than T, refdiff "
            "samples at evenly spaced timesteps that include 0 and T-1 (diffusers' 'linspace'); "
            "with all T steps the two coincide. For diffusers' own subsequence respace the "
            "schedule yourself (docs/diffusers.md)"
        )
    if c["steps_offset"] != 0:
        notes.append(
            f"steps_offset {c['steps_offset']}: refdiff's respacing adds no offset (diffusers "
            "adds it to the 'leading' timesteps)"
        )
    if c.get("variance_type") == "fixed_large_log":
        notes.append(
            "variance_type 'fixed_large_log': refdiff samples with σ² = β_t (fixed_large), what "
            "the name means; diffusers' DDPMScheduler.step takes the square root of log β_t "
            "here and returns NaN"
        )
    if cls == "DDIMScheduler":
        if not c["set_alpha_to_one"]:
            notes.append(
                "set_alpha_to_one false: refdiff's DDIM ends its last step at ᾱ = 1 (x̂_0, as the "
                "DDIM paper does); diffusers' ends at ᾱ of timestep 0"
            )
        if c["clip_sample"]:
            notes.append(
                "clip_sample with DDIM: refdiff recomputes ε̂ from the clipped x̂_0 (diffusers' "
                "use_clipped_model_output=True); diffusers' DDIMPipeline default keeps the "
                "unclipped ε̂"
            )
    return notes


def read_scheduler_config(
    config: Mapping[str, Any] | str | os.PathLike[str],
    *,
    image_shape: tuple[int, int, int],
    out_channels: int | None = None,
) -> DiffusersSettings:
    """Map a diffusers ``DDPMScheduler`` or ``DDIMScheduler`` config onto refdiff's settings.

    Parameters
    ----------
    config : mapping or path
        The scheduler config (``scheduler_config.json``, or the dict ``scheduler.config``). A
        config without ``_class_name`` is a ``DDIMScheduler``'s if it has ``set_alpha_to_one``
        (a key only that class takes), else a ``DDPMScheduler``'s.
    image_shape : (C, H, W)
        The shape of one image (from the UNet's config).
    out_channels : int, optional
        The UNet's output channels, checked against the variance type: C for a fixed variance,
        2C for ``learned`` and ``learned_range``.

    Returns
    -------
    DiffusersSettings
        The :class:`Diffusion` and the notes on options refdiff's sampling does not follow.

    Raises
    ------
    ValueError, TypeError
        A scheduler class other than DDPMScheduler and DDIMScheduler, a key the class does not
        take, an unknown beta schedule, prediction or variance type, ``thresholding=True``, a
        clip range other than 1 (the data range [-1, 1]), trained betas of the wrong length,
        zero terminal SNR with an ε-prediction, output channels that do not fit the variance.
    """
    if not isinstance(config, Mapping):
        config = _read_json(Path(config), "scheduler config")
    # ``scheduler.config`` (in memory) has no _class_name: a DDIM config is known by its key
    default_cls = "DDIMScheduler" if "set_alpha_to_one" in config else "DDPMScheduler"
    cls = config.get("_class_name", default_cls)
    if cls not in _DEFAULTS:
        raise ValueError(
            f"scheduler class {cls!r} is not supported; refdiff reads the configs of "
            f"{list(SCHEDULER_CLASSES)} (the schedule a DDPM model was trained with)"
        )
    defaults = _DEFAULTS[cls]
    given = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"scheduler config: {cls} takes no key(s) {unknown}; refdiff refuses options it "
            f"does not know rather than drop them (the keys of {cls}: {sorted(defaults)})"
        )
    c = {**defaults, **given}
    _check_types(c)
    _check_choice("prediction_type", c["prediction_type"], _PREDICTIONS)
    _check_choice("timestep_spacing", c["timestep_spacing"], _SPACINGS)
    if c["thresholding"]:
        raise ValueError(
            "scheduler config: thresholding true (dynamic thresholding of x̂_0, Imagen) is not "
            "supported: refdiff clips x̂_0 to the data range or not at all"
        )
    if c["clip_sample"] and c["clip_sample_range"] != 1.0:
        raise ValueError(
            f"scheduler config: clip_sample_range {c['clip_sample_range']!r} with clip_sample "
            "true is not supported: refdiff clips x̂_0 to the data range [-1, 1] "
            "(clip_sample_range 1.0)"
        )
    if cls == "DDPMScheduler":
        _check_choice("variance_type", c["variance_type"], _VARIANCES)
        variance = _VARIANCES[c["variance_type"]]
    else:
        variance = Variance.FIXED_SMALL  # DDIM's σ comes from η; η = 1 is DDPM's fixed_small
    C = int(image_shape[0])
    want = 2 * C if variance.learned else C
    if out_channels is not None and out_channels != want:
        what = c.get("variance_type", f"{cls}'s (no learned variance)")
        raise ValueError(
            f"the UNet outputs {out_channels} channels for {C} image channels, but the "
            f"scheduler's variance type {what!r} needs {want} = {'2C' if variance.learned else 'C'}"
        )
    schedule = _schedule(c)
    try:
        diffusion = Diffusion(
            schedule,
            prediction=_PREDICTIONS[c["prediction_type"]],
            variance=variance,
            image_shape=image_shape,  # Diffusion makes it a tuple of ints
            data_range=(-1.0, 1.0),
            clip_denoised=c["clip_sample"],
        )
    except ValueError as exc:
        raise ValueError(
            f"scheduler config (prediction_type {c['prediction_type']!r}, "
            f"rescale_betas_zero_snr {c['rescale_betas_zero_snr']}): {exc}"
        ) from None
    return DiffusersSettings(
        diffusion=diffusion,
        scheduler_class=cls,
        config=c,
        variance_is_sigma2=c.get("variance_type") == "learned",
        notes=tuple(_notes(cls, c)),
    )


def diffusion_from_scheduler_config(
    config: Mapping[str, Any] | str | os.PathLike[str],
    *,
    image_shape: tuple[int, int, int],
) -> Diffusion:
    """The :class:`Diffusion` of a diffusers scheduler config (:func:`read_scheduler_config`),
    issuing each note as a :class:`DiffusersOptionWarning`."""
    settings = read_scheduler_config(config, image_shape=image_shape)
    for note in settings.notes:
        warnings.warn(note, DiffusersOptionWarning, stacklevel=2)
    return settings.diffusion


# ------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a JSON object, got {type(d).__name__}")
    return d


def is_diffusers_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder that looks like diffusers' (``model_index.json``, or a ``config.json``
    that names its ``_class_name``); refdiff's run folders have neither."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "model_index.json").is_file():
        return True
    try:
        return "_class_name" in _read_json(p / "config.json", "config")
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class DiffusersFolder:
    """A diffusers model folder, read without loading the weights.

    Attributes
    ----------
    unet_dir : Path
        The folder holding the UNet's ``config.json`` and weights.
    unet_config : dict
        Its ``config.json``.
    scheduler_path : Path or None
        The scheduler config it goes with (None when one was given as a mapping).
    pipeline_class : str or None
        The pipeline's class (``model_index.json``), None for a bare UNet folder.
    settings : DiffusersSettings
        The scheduler config as refdiff settings, with its notes.
    """

    unet_dir: Path
    unet_config: dict[str, Any]
    scheduler_path: Path | None
    pipeline_class: str | None
    settings: DiffusersSettings

    @property
    def diffusion(self) -> Diffusion:
        return self.settings.diffusion


def _pipeline_parts(root: Path) -> tuple[str, Path, Path]:
    index = _read_json(root / "model_index.json", "pipeline index")
    cls = index.get("_class_name")
    if cls not in PIPELINE_CLASSES:
        raise ValueError(
            f"{str(root)!r} holds a {cls!r} pipeline; refdiff loads the unconditional "
            f"pixel-space pipelines {list(PIPELINE_CLASSES)} (one UNet2DModel and one scheduler)"
        )
    parts = sorted(k for k, v in index.items() if not k.startswith("_") and v is not None)
    if parts != ["scheduler", "unet"]:
        raise ValueError(
            f"the {cls} pipeline in {str(root)!r} has the components {parts}; refdiff loads "
            "exactly a 'unet' and a 'scheduler'"
        )
    return cls, root / "unet", root / "scheduler" / "scheduler_config.json"


def _scheduler_beside(unet_dir: Path) -> Path:
    """A UNet folder's scheduler config: in the folder itself, or in a sibling ``scheduler/``."""
    for candidate in (
        unet_dir / "scheduler_config.json",
        unet_dir.parent / "scheduler" / "scheduler_config.json",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no scheduler config beside the UNet folder {str(unet_dir)!r}: expected "
        f"{str(unet_dir / 'scheduler_config.json')!r} or "
        f"{str(unet_dir.parent / 'scheduler' / 'scheduler_config.json')!r} (the schedule the "
        "model was trained with; pass scheduler_config= to give one)"
    )


def unet_image_shape(config: Mapping[str, Any], where: str) -> tuple[int, int, int]:
    """(C, H, W) of an unconditional ``UNet2DModel`` config; other models are refused, naming
    the class."""
    cls = config.get("_class_name")
    if cls != UNET_CLASS:
        kind = (
            " (a conditional model: it needs text or other conditioning inputs)"
            if isinstance(cls, str) and "Condition" in cls
            else ""
        )
        raise ValueError(
            f"{where} holds a {cls!r}{kind}; refdiff loads unconditional {UNET_CLASS} denoisers"
        )
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise ValueError(
            f"{where} holds a class-conditional {UNET_CLASS} (class_embed_type "
            f"{config.get('class_embed_type')!r}, num_class_embeds "
            f"{config.get('num_class_embeds')!r}); refdiff loads unconditional denoisers"
        )
    emb = config.get("time_embedding_type", "positional")
    if emb not in ("positional", "learned"):
        raise ValueError(
            f"{where}: time_embedding_type {emb!r} is not supported; refdiff's denoisers take "
            "integer timestep indices ('positional' or 'learned' embeddings), not noise levels"
        )
    size = config.get("sample_size")
    if _is_int(size):
        size = (size, size)
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(_is_int(s) and s > 0 for s in size)
    ):
        raise ValueError(
            f"{where}: sample_size must be an image size (an int or [H, W]), got {size!r}"
        )
    c = config.get("in_channels", 3)
    if not _is_int(c) or c < 1:
        raise ValueError(f"{where}: in_channels must be a positive int, got {c!r}")
    return (c, int(size[0]), int(size[1]))


def read_diffusers_folder(
    path: str | os.PathLike[str],
    *,
    scheduler_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
) -> DiffusersFolder:
    """Read a diffusers pipeline folder, or a UNet folder with a scheduler config beside it.

    Parameters
    ----------
    path : str or PathLike
        A ``DDPMPipeline``/``DDIMPipeline`` folder (``model_index.json``, ``unet/``,
        ``scheduler/``), or a ``UNet2DModel`` folder (``config.json`` and weights) whose scheduler
        config sits in it (``scheduler_config.json``) or in a sibling ``scheduler/`` folder.
    scheduler_config : mapping or path, optional
        The scheduler config to use instead of the one found.

    Raises
    ------
    FileNotFoundError
        No such folder, no UNet config, no scheduler config.
    ValueError, TypeError
        Another pipeline or model class (named), a conditional UNet, a scheduler config refdiff
        cannot honour (:func:`read_scheduler_config`).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"diffusers folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder (expected a diffusers pipeline folder)")
    sched_path: Path | None
    if (root / "model_index.json").is_file():
        pipeline, unet_dir, sched_path = _pipeline_parts(root)
    else:
        pipeline, unet_dir = None, root
        sched_path = None if scheduler_config is not None else _scheduler_beside(root)
    unet_config = _read_json(unet_dir / "config.json", "UNet config")
    shape = unet_image_shape(unet_config, f"{str(unet_dir)!r}")
    out_c = unet_config.get("out_channels", 3)
    source: Any = sched_path
    if scheduler_config is not None:
        source = scheduler_config
        sched_path = (
            Path(scheduler_config) if isinstance(scheduler_config, (str, os.PathLike)) else None
        )
    settings = read_scheduler_config(source, image_shape=shape, out_channels=out_c)
    T = settings.diffusion.num_timesteps
    if unet_config.get("time_embedding_type") == "learned":
        n = unet_config.get("num_train_timesteps")
        if n != T:
            raise ValueError(
                f"{str(unet_dir)!r}: the UNet's learned time embedding covers "
                f"num_train_timesteps {n!r}, the scheduler config T = {T}"
            )
    return DiffusersFolder(
        unet_dir=unet_dir,
        unet_config=unet_config,
        scheduler_path=sched_path,
        pipeline_class=pipeline,
        settings=settings,
    )
