"""The configuration of a training run: :class:`TrainConfig`, config files, recipes.

A run is fully described by one :class:`TrainConfig` (data, network, diffusion settings, objective,
optimiser, schedule of evaluations and checkpoints); it is stored in every checkpoint and in the
run folder's ``config.json``. It is assembled, lowest precedence first, from

1. the dataclass defaults,
2. a *recipe* (``RECIPES``): tested settings for a data set and preset; ``digits`` is applied
   automatically to ``--data digits`` with the ``tiny`` preset,
3. a config file (TOML or JSON, the same keys as :meth:`TrainConfig.to_dict`, plus ``recipe`` at
   the top and ``preset`` in the ``[unet]`` table),
4. command-line flags.

Example file::

    data = "digits"
    steps = 3000
    lr = 1e-3

    [unet]
    preset = "tiny"        # start from a preset, override fields below
    dropout = 0.0

    [diffusion]
    schedule = { name = "linear", T = 200 }
    prediction = "epsilon"
    variance = "fixed_small"

Unknown keys anywhere are a ``ValueError`` naming them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._enums import LossType, Variance
from ..samplers import SAMPLERS
from ..settings import Diffusion
from ..timestep_sampling import TIMESTEP_SAMPLERS
from .unet_config import PRESETS, UNetConfig, preset

__all__ = [
    "RECIPES",
    "RESUMABLE_KEYS",
    "TrainConfig",
    "applied_recipe",
    "config_differences",
    "deep_merge",
    "load_config_file",
    "resolve_config",
]

OPTIMIZERS = ("adam", "adamw")
#: The schedule a config gets when it names none (a partial one is completed from it).
DEFAULT_SCHEDULE = {"name": "linear", "params": {}, "T": 1000}
EVAL_METHODS = ("full", "mc")

#: Keys that may change when a run is resumed: they decide how long to train and what to report,
#: not what is trained. Every other key must equal the checkpoint's.
RESUMABLE_KEYS = frozenset(
    {
        "steps",
        "log_every",
        "eval_every",
        "sample_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_examples",
        "eval_batch_size",
        "eval_method",
        "eval_mc_draws",
        "sampler",
        "sample_steps",
        "num_samples",
        "compile",
    }
)

#: Tested settings (a nested overlay of :meth:`TrainConfig.to_dict` keys).
RECIPES: dict[str, dict[str, Any]] = {
    # The 8x8 digits with the tiny preset on a 2-core CPU in about four minutes: the bound itself
    # as the loss with improved DDPM's importance-sampled timesteps and learned-range variances
    # (the likelihood setting of Nichol & Dhariwal), v-prediction, T = 200. docs/training.md
    # has the measurements behind these choices.
    "digits": {
        "steps": 2000,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup_steps": 100,
        "grad_clip": 1.0,
        "ema_rate": 0.999,
        "loss": "vlb",
        "timestep_sampler": "loss_second_moment",
        "log_every": 50,
        "eval_every": 0,
        "sample_every": 0,
        "checkpoint_every": 500,
        "eval_examples": 359,
        "num_samples": 100,
        "unet": {"preset": "tiny", "dropout": 0.0},
        "diffusion": {
            "schedule": {"name": "linear", "T": 200},
            "prediction": "v",
            "variance": "learned_range",
        },
    },
}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    The parameters come in five groups, in this order: the data, the model, the objective and
    optimiser, the CUDA-only switches and the reporting.

    Parameters
    ----------
    data : str
        ``"digits"``, a folder of images, a ``.npz`` file, or a CIFAR-10 folder / ``.tar.gz``
        (see :func:`refdiff.data.load_dataset`).
    image_size : int or None
        Image folders only: resize and centre-crop to this size (None: keep, all must agree).
    holdout_fraction : float
        Sources without a test split (image folders, ``.npz``): this fraction of the images,
        chosen by a seeded permutation, is held out for evaluation and never trained on. Digits
        and CIFAR-10 train on their train split and evaluate on their test split.
    value_range : (lo, hi) or None
        ``.npz`` files only: the range the stored values lie in (default: 0..255 for integers,
        -1..1 for floats; see :func:`refdiff.data.load_npz`).
    npz_key : str or None
        ``.npz`` files only: the array holding the images (default: ``images``, or the only
        array).
    flip : bool
        Random horizontal flips of training images (off for digits: a mirrored 2 is no digit).
    unet : UNetConfig
        The U-Net's architecture.
    diffusion : Diffusion
        Its ``image_shape`` must be ``(unet.in_channels, unet.image_size, unet.image_size)`` and
        a learned variance needs ``unet.learn_sigma``; :meth:`from_dict` derives both by default.
    loss : {"simple", "hybrid", "vlb"}
        The training loss (:func:`refdiff.training_losses`).
    timestep_sampler : {"uniform", "loss_second_moment"}
        How training timesteps are drawn (:mod:`refdiff.timestep_sampling`).
    optimizer : {"adam", "adamw"}
        The optimiser.
    lr, weight_decay : float
        Its learning rate and weight decay.
    warmup_steps : int
        Linear learning-rate warm-up from lr/warmup_steps to lr over this many steps.
    grad_clip : float or None
        Clip the global gradient norm to this value (None: no clipping).
    batch_size : int
        The global batch (split over the processes of a distributed run).
    steps : int
        Optimiser steps in total (a resumed run continues up to this number).
    ema_rate : float
        Decay of the exponential moving average of the weights; the effective decay at step s is
        ``min(ema_rate, (1 + s) / (10 + s))`` so early averages are not dominated by the init.
    seed : int
        Seeds the initial weights, data order, timesteps, noise and dropout.
    bf16, channels_last, compile : bool
        CUDA only (ignored, with a note, on the CPU): bfloat16 autocast, channels-last memory
        format, ``torch.compile``.
    log_every : int
        Steps between lines of ``metrics.jsonl``.
    eval_every, sample_every, checkpoint_every : int
        Steps between evaluations (held-out bits/dim), sample grids and checkpoints; 0 means only
        at the end of the run (which always evaluates, samples and checkpoints).
    keep_checkpoints : int
        How many of the latest checkpoints to keep.
    eval_examples, eval_batch_size : int
        Held-out images evaluated (the first ones of the held-out set) and per forward pass.
    eval_method : {"full", "mc"}
        The full bound over all T steps, or an unbiased Monte-Carlo estimate with
        ``eval_mc_draws`` timesteps per image.
    sampler : str
        A name of :data:`refdiff.SAMPLERS` (``ddpm``, ``ddim``, ``dpmpp_2m``, ``heun``, ...).
    sample_steps : int or None
        Steps of the sampler (respaced schedule); None: the sampler's default steps
        (its registry entry: all T for ddpm).
    num_samples : int
        Images in each sample grid.
    """

    data: str = "digits"
    image_size: int | None = None
    holdout_fraction: float = 0.05
    value_range: tuple[float, float] | None = None
    npz_key: str | None = None
    flip: bool = False
    unet: UNetConfig = field(default_factory=lambda: preset("tiny"))
    diffusion: Diffusion = field(default_factory=lambda: Diffusion(image_shape=(1, 8, 8)))
    loss: LossType = LossType.SIMPLE
    timestep_sampler: str = "uniform"
    optimizer: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    batch_size: int = 128
    steps: int = 10000
    ema_rate: float = 0.9999
    seed: int = 0
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    log_every: int = 50
    eval_every: int = 0
    sample_every: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_examples: int = 256
    eval_batch_size: int = 256
    eval_method: str = "full"
    eval_mc_draws: int = 32
    sampler: str = "ddpm"
    sample_steps: int | None = None
    num_samples: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data must be a non-empty string, got {self.data!r}")
        if not isinstance(self.unet, UNetConfig):
            raise TypeError(f"unet must be a UNetConfig, got {type(self.unet).__name__}")
        if not isinstance(self.diffusion, Diffusion):
            raise TypeError(f"diffusion must be a Diffusion, got {type(self.diffusion).__name__}")
        object.__setattr__(self, "loss", LossType.parse(self.loss))
        for name, choices in (
            ("timestep_sampler", tuple(TIMESTEP_SAMPLERS)),
            ("optimizer", OPTIMIZERS),
            ("eval_method", EVAL_METHODS),
            ("sampler", tuple(SAMPLERS)),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}"
                )
        for name in ("flip", "bf16", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        positive = ("batch_size", "eval_examples", "eval_batch_size", "num_samples")
        non_negative = (
            "steps",
            "warmup_steps",
            "seed",
            "log_every",
            "eval_every",
            "sample_every",
            "checkpoint_every",
        )
        for name in positive:
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in non_negative:
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not _is_int(self.keep_checkpoints) or self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be an int >= 1, got {self.keep_checkpoints!r}")
        if not _is_int(self.eval_mc_draws) or self.eval_mc_draws < 2:
            raise ValueError(f"eval_mc_draws must be an int >= 2, got {self.eval_mc_draws!r}")
        if not _is_num(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and (not _is_num(self.grad_clip) or self.grad_clip <= 0):
            raise ValueError(f"grad_clip must be a positive number or None, got {self.grad_clip!r}")
        if not _is_num(self.ema_rate) or not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate must lie in [0, 1), got {self.ema_rate!r}")
        if not _is_num(self.holdout_fraction) or not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction!r}")
        if self.value_range is not None:
            vr = self.value_range
            if (
                not isinstance(vr, (list, tuple))
                or len(vr) != 2
                or not all(_is_num(v) for v in vr)
                or not vr[0] < vr[1]
            ):
                raise ValueError(f"value_range must be [lo, hi] with lo < hi, got {vr!r}")
            object.__setattr__(self, "value_range", (float(vr[0]), float(vr[1])))
        if self.npz_key is not None and (not isinstance(self.npz_key, str) or not self.npz_key):
            raise ValueError(f"npz_key must be a non-empty string or None, got {self.npz_key!r}")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {self.image_size!r}")
        if self.image_size is not None and self.image_size != self.unet.image_size:
            raise ValueError(
                f"image_size={self.image_size} (the data) differs from the U-Net's image_size="
                f"{self.unet.image_size}; set both to the same value"
            )
        T = self.diffusion.num_timesteps
        if self.sample_steps is not None and (
            not _is_int(self.sample_steps) or not 1 <= self.sample_steps <= T
        ):
            raise ValueError(
                f"sample_steps must be an int in [1, T={T}] or None, got {self.sample_steps!r}"
            )
        u, d = self.unet, self.diffusion
        want = (u.in_channels, u.image_size, u.image_size)
        if tuple(d.image_shape) != want:
            raise ValueError(
                f"diffusion.image_shape {tuple(d.image_shape)} does not match the U-Net "
                f"(in_channels, image_size, image_size) = {want}"
            )
        if d.out_channels != u.out_channels:
            raise ValueError(
                f"variance {d.variance.value!r} needs {d.out_channels} output channels but the "
                f"U-Net has learn_sigma={u.learn_sigma} ({u.out_channels} outputs); set "
                f"unet.learn_sigma = {d.variance.learned}"
            )
        if d.variance.learned and self.loss is LossType.SIMPLE:
            raise ValueError(
                f"a {d.variance.value!r} variance is only trained by the 'hybrid' or 'vlb' loss, "
                "not 'simple'"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.diffusion.image_shape)  # type: ignore[return-value]

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it exactly."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("unet", "diffusion"):
                v = v.to_dict()
            elif f.name == "loss":
                v = v.value
            elif f.name == "value_range" and v is not None:
                v = list(v)
            out[f.name] = v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) dict; missing keys take their defaults.

        ``unet`` may name a ``preset`` whose fields the other ``unet`` keys override (default:
        the ``tiny`` preset); ``unet.learn_sigma`` defaults to whether the variance is learned and
        ``diffusion.image_shape`` to the U-Net's. Unknown keys raise ``ValueError``.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"a training config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known, key=str)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        kw = {k: v for k, v in d.items() if k not in ("unet", "diffusion")}
        unet_d = dict(_section(d, "unet"))
        diff_d = dict(_section(d, "diffusion"))
        learned = Variance.parse(diff_d.get("variance", Variance.FIXED_SMALL)).learned
        name = unet_d.pop("preset", None)
        unet_d.setdefault("learn_sigma", learned)
        if name is not None or not _full_unet(unet_d):
            unet = preset("tiny" if name is None else name, **unet_d)
        else:
            unet = UNetConfig.from_dict(unet_d)
        diff_d.setdefault("image_shape", (unet.in_channels, unet.image_size, unet.image_size))
        if isinstance(diff_d.get("schedule"), Mapping):
            # a partial description (--schedule cosine, or --timesteps 500 alone) is completed
            # from the default schedule: linear, T = 1000
            sched = dict(diff_d["schedule"])
            sched.setdefault("name", DEFAULT_SCHEDULE["name"])
            if sched["name"] != "custom":
                sched.setdefault("T", DEFAULT_SCHEDULE["T"])
            sched.setdefault("params", {})
            diff_d["schedule"] = sched
        diffusion = Diffusion.from_dict(diff_d)
        if "grad_clip" in kw and kw["grad_clip"] == 0:
            kw["grad_clip"] = None
        return cls(unet=unet, diffusion=diffusion, **kw)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"training config is not valid JSON: {exc}") from None


def _section(d: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    v = d.get(name, {})
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"config key {name!r} must be a table/mapping, got {v!r}")
    return v


def _full_unet(d: Mapping[str, Any]) -> bool:
    """True when ``d`` names every UNetConfig field (a stored config, not overrides)."""
    return {f.name for f in dataclasses.fields(UNetConfig)} <= set(d)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, recursively for nested mappings (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) config file into a dict (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such config file: {str(p)!r}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ValueError(
                    f"{str(p)!r}: reading TOML needs Python 3.11+ or the 'tomli' package; "
                    "or write the config as JSON"
                ) from None
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{str(p)!r} is not valid TOML: {exc}") from None
    elif suffix == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(p)!r} is not valid JSON: {exc}") from None
    else:
        raise ValueError(f"config files must end in .toml or .json, got {str(p)!r}")
    if not isinstance(d, dict):
        raise ValueError(f"{str(p)!r} must hold a table/object at the top level")
    return d


def resolve_config(
    file: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Assemble a config: defaults < recipe < ``file`` < ``overrides`` (both nested dicts).

    The recipe is the one named by a ``recipe`` key (``"none"`` for no recipe); by default
    ``digits`` when the data are the digits and the U-Net preset is ``tiny`` (the default preset
    for the digits; other data default to the ``cifar10`` preset).

    An override replaces the file's value of its key, and the file's values that follow from it
    are derived again: ``unet.preset`` replaces the file's whole ``unet`` table (a preset is a
    network), a new channel count, image size or preset re-derives ``diffusion.image_shape``, a
    new ``diffusion.variance`` re-derives ``unet.learn_sigma``, a new schedule name drops the
    file's parameters of the old schedule.
    """
    merged, recipe = _merge(file, overrides)
    if recipe is not None:
        merged = deep_merge(RECIPES[recipe], merged)
    return TrainConfig.from_dict(merged)


def applied_recipe(
    file: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> str | None:
    """The name of the recipe :func:`resolve_config` applies to these inputs (None: none)."""
    return _merge(file, overrides)[1]


def _merge(
    file: str | Path | Mapping[str, Any] | None, overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    """The file under the overrides, with a default preset, and the recipe to put under both."""
    base = load_config_file(file) if isinstance(file, (str, Path)) else dict(file or {})
    merged = deep_merge(_without_overridden(base, overrides or {}), overrides or {})
    data = merged.get("data", TrainConfig.data)
    unet = dict(_section(merged, "unet"))
    if "preset" not in unet and not _full_unet(unet):
        unet["preset"] = "tiny" if data == "digits" else "cifar10"
    if unet.get("preset") is not None and unet["preset"] not in PRESETS:
        raise ValueError(f"unknown U-Net preset {unet['preset']!r}; choose from {sorted(PRESETS)}")
    merged["unet"] = unet
    recipe = merged.pop("recipe", None)
    if recipe is None and data == "digits" and unet.get("preset") == "tiny":
        recipe = "digits"
    if recipe not in (None, "none") and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)} or 'none'")
    return merged, None if recipe in (None, "none") else recipe


def _without_overridden(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` less the values that ``top`` replaces or that follow from values it replaces
    (see :func:`resolve_config`); the keys ``top`` sets itself are left for the merge."""
    out = copy.deepcopy(dict(base))
    unet_top, diff_top = _section(top, "unet"), _section(top, "diffusion")
    unet, diff = dict(_section(out, "unet")), dict(_section(out, "diffusion"))
    if "preset" in unet_top:
        unet = {}
    if {"preset", "in_channels", "image_size"} & set(unet_top) or "image_size" in top:
        diff.pop("image_shape", None)
    if "variance" in diff_top:
        unet.pop("learn_sigma", None)
    old, new = diff.get("schedule"), diff_top.get("schedule")
    if isinstance(old, Mapping) and isinstance(new, Mapping) and "name" in new:
        if old.get("name") != new["name"]:
            diff["schedule"] = {k: v for k, v in old.items() if k == "T"}
    if "unet" in out or unet:
        out["unet"] = unet
    if "diffusion" in out or diff:
        out["diffusion"] = diff
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(
    a: TrainConfig | Mapping[str, Any],
    b: TrainConfig | Mapping[str, Any],
    *,
    ignore: frozenset[str] | set[str] = RESUMABLE_KEYS,
) -> dict[str, tuple[Any, Any]]:
    """Keys (dotted, e.g. ``unet.base_channels``) whose values differ: key -> (a's, b's).

    ``ignore`` lists top-level keys left out (by default those a resumed run may change).
    """
    fa = _flatten(a.to_dict() if isinstance(a, TrainConfig) else a)
    fb = _flatten(b.to_dict() if isinstance(b, TrainConfig) else b)
    diffs = {}
    for key in sorted(set(fa) | set(fb)):
        if key.split(".")[0] in ignore:
            continue
        va, vb = fa.get(key, "<missing>"), fb.get(key, "<missing>")
        if _normal(va) != _normal(vb):
            diffs[key] = (va, vb)
    return diffs


def _normal(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
