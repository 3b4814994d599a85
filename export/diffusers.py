"""diffusers models in: a pipeline or UNet folder loaded as a refdiff denoiser ``(x, t) -> output``.

:func:`load_diffusers` reads a ``DDPMPipeline``/``DDIMPipeline`` folder (or a ``UNet2DModel`` folder
with a scheduler config beside it) with :func:`refdiff.diffusers_config.read_diffusers_folder`
(the JSON, torch-free), loads the UNet's weights with diffusers, and returns the UNet wrapped as a
plain denoiser module with its :class:`~refdiff.Diffusion` settings, ready for
:func:`refdiff.export.export_onnx`, :func:`refdiff.export.verify_onnx` and the core (the bound,
the samplers) on torch tensors.

Needs the ``diffusers`` extra (``pip install "refdiff[diffusers]"``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from refdiff._deps import require
from refdiff.diffusers_config import (
    DiffusersOptionWarning,
    DiffusersSettings,
    read_diffusers_folder,
    read_scheduler_config,
    unet_image_shape,
)
from refdiff.settings import Diffusion

__all__ = ["DiffusersDenoiser", "LoadedDiffusers", "load_diffusers", "wrap_unet"]


def _import_diffusers() -> Any:
    return require("diffusers", "diffusers", "loading a diffusers model")


def _jsonable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet's own settings as plain JSON values, without diffusers' bookkeeping keys."""
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(public))


class _Config:
    """What :func:`refdiff.export.onnx_export.model_settings` reads: ``config.to_dict()``."""

    def __init__(self, d: dict[str, Any]) -> None:
        self._d = d

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._d))


class DiffusersDenoiser(nn.Module):
    """An unconditional diffusers ``UNet2DModel`` as a plain denoiser ``(x, t) -> model_output``.

    ``x`` is float [B, C, H, W], ``t`` int64 [B] (timestep indices, which is what diffusers'
    DDPM and DDIM pipelines give the UNet); the output is the UNet's ``sample`` tensor
    [B, C or 2C, H, W]. With diffusers' ``learned`` variance (the UNet's variance channels are σ²)
    the variance channels are returned as log σ², refdiff's ``learned`` convention.

    Parameters
    ----------
    unet : diffusers.UNet2DModel
        Unconditional (no class embedding).
    variance_is_sigma2 : bool
        Take the log of the variance channels (diffusers' ``learned`` variance type).
    metadata : mapping, optional
        Extra entries for ``config.to_dict()`` (which ``export_onnx`` stores in the file's
        metadata): the scheduler's class and config.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        variance_is_sigma2: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(unet, nn.Module) or not hasattr(unet, "config"):
            raise TypeError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}")
        # a diffusers FrozenDict (torch types an nn.Module's attributes as tensors or modules)
        unet_config = cast(Mapping[str, Any], unet.config)
        cfg = {**dict(unet_config), "_class_name": type(unet).__name__}
        self.image_shape = unet_image_shape(cfg, f"the {type(unet).__name__} given")
        self.unet = unet
        self.variance_is_sigma2 = bool(variance_is_sigma2)
        self.config = _Config(
            {
                "library": "diffusers",
                "class_name": type(unet).__name__,
                "config": _jsonable_config(unet_config),
                "variance_channels": "log of the UNet's sigma^2"
                if self.variance_is_sigma2
                else "as the UNet outputs them",
                **dict(metadata or {}),
            }
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.unet(x, t, return_dict=False)[0]
        if self.variance_is_sigma2:
            c = x.shape[1]
            out = torch.cat([out[:, :c], torch.log(out[:, c:])], dim=1)
        return out


class LoadedDiffusers(NamedTuple):
    """What :func:`load_diffusers` returns.

    Attributes
    ----------
    model : DiffusersDenoiser
        The UNet as a refdiff denoiser module (``(x_t, t) -> model_output``).
    diffusion : Diffusion
        Its settings, read from the scheduler's config.
    notes : tuple of str
        The scheduler options refdiff does not honour, one line each.
    source : str
        The folder it was read from.
    """

    model: DiffusersDenoiser
    diffusion: Diffusion
    notes: tuple[str, ...]
    source: str


def wrap_unet(
    unet: nn.Module, scheduler_config: Mapping[str, Any], *, warn: bool = True
) -> tuple[DiffusersDenoiser, Diffusion]:
    """An in-memory ``UNet2DModel`` and its scheduler's config (``scheduler.config``) as a
    refdiff denoiser and its settings; the notes on unhonoured options are issued as
    :class:`~refdiff.diffusers_config.DiffusersOptionWarning` unless ``warn=False``.

    Parameters
    ----------
    unet : torch.nn.Module
        An unconditional diffusers ``UNet2DModel``.
    scheduler_config : mapping
        Its scheduler's config (a DDPM or DDIM scheduler's ``config``).
    warn : bool
        Issue the notes as warnings.

    Returns
    -------
    (DiffusersDenoiser, Diffusion)
        The denoiser module and its settings.
    """
    unet_config: Mapping[str, Any] = getattr(unet, "config", {})
    shape = unet_image_shape(
        {**dict(unet_config), "_class_name": type(unet).__name__},
        f"the {type(unet).__name__} given",
    )
    settings = read_scheduler_config(
        scheduler_config, image_shape=shape, out_channels=unet_config.get("out_channels", 3)
    )
    _warn(settings, warn)
    return _wrap(unet, settings), settings.diffusion


def _warn(settings: DiffusersSettings, warn: bool) -> None:
    if warn:
        for note in settings.notes:
            warnings.warn(note, DiffusersOptionWarning, stacklevel=3)


def _wrap(unet: nn.Module, settings: DiffusersSettings) -> DiffusersDenoiser:
    extra = {"scheduler_class": settings.scheduler_class, "scheduler_config": settings.config}
    return DiffusersDenoiser(
        unet, variance_is_sigma2=settings.variance_is_sigma2, metadata=extra
    ).eval()


def load_diffusers(
    path: str | os.PathLike[str],
    *,
    scheduler_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    warn: bool = True,
) -> LoadedDiffusers:
    """Load a diffusers pipeline folder, or a UNet folder with its scheduler config, as a refdiff
    denoiser module and its settings.

    Parameters
    ----------
    path : str or PathLike
        A ``DDPMPipeline`` or ``DDIMPipeline`` folder (``model_index.json``, ``unet/``,
        ``scheduler/``) or a ``UNet2DModel`` folder (``config.json`` and
        ``diffusion_pytorch_model.safetensors``) with ``scheduler_config.json`` in it or in a
        sibling ``scheduler/`` folder. Read from disk only (nothing is downloaded).
    scheduler_config : mapping or path, optional
        A scheduler config to use instead of the folder's.
    device : str or torch.device
        Where to put the weights (float32).
    warn : bool
        Issue the notes on options refdiff's sampling does not follow as
        :class:`~refdiff.diffusers_config.DiffusersOptionWarning` (they are in ``.notes``
        either way).

    Returns
    -------
    LoadedDiffusers
        ``(model, diffusion, notes, source)``: the :class:`DiffusersDenoiser` in eval mode, its
        :class:`~refdiff.Diffusion`, the notes, the folder.

    Raises
    ------
    refdiff._deps.MissingDependency
        diffusers is not installed (the message names the ``diffusers`` extra).
    FileNotFoundError, ValueError, TypeError
        As :func:`refdiff.diffusers_config.read_diffusers_folder`: a missing file, another
        pipeline or model class (named), a conditional UNet, a scheduler option refdiff cannot
        honour.
    """
    folder = read_diffusers_folder(path, scheduler_config=scheduler_config)
    diffusers = _import_diffusers()
    weights = [
        f
        for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
        if (folder.unet_dir / f).is_file()
    ]
    if not weights:
        raise FileNotFoundError(
            f"no UNet weights in {str(folder.unet_dir)!r} (expected "
            "diffusion_pytorch_model.safetensors)"
        )
    with warnings.catch_warnings():
        # diffusers' own deprecation chatter on loading, not errors
        warnings.simplefilter("ignore", FutureWarning)
        unet = diffusers.UNet2DModel.from_pretrained(
            str(folder.unet_dir),
            local_files_only=True,
            torch_dtype=torch.float32,
            low_cpu_mem_usage=False,
        )
    unet = unet.to(device)
    _warn(folder.settings, warn)
    model = _wrap(unet, folder.settings)
    return LoadedDiffusers(model, folder.diffusion, folder.settings.notes, str(Path(path)))
