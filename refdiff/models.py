"""One door for every model: a path in, the denoiser and its :class:`~refdiff.Diffusion` out.

``refdiff export``, ``check``, ``sample`` and ``eval`` open their models here, so each accepts
every format this module reads:

=============  =================================================  ========================
format         what the path is                                   needs
=============  =================================================  ========================
``onnx``       a ``.onnx`` file written by ``refdiff export``:      ``refdiff[onnx]``
               a denoiser, or a generator (format
               ``generator``/``step``: a whole sampler)
``diffusers``  a diffusers DDPM/DDIM pipeline folder, or a         ``refdiff[diffusers]``
               ``UNet2DModel`` folder with its scheduler config
``refdiff``    a training run folder (its latest checkpoint) or    ``refdiff[torch]``
               one of its ``checkpoints/ckpt-*`` folders
=============  =================================================  ========================

An ONNX file runs through :class:`~refdiff.runtime.OnnxDenoiser` (no PyTorch: NumPy on the CPU,
CuPy on CUDA); the other formats through PyTorch, behind NumPy arrays
(:class:`~refdiff.nn.numpy_bridge.TorchDenoiser`), with the module itself at hand for export.
A new format is one :class:`ModelReader` in :data:`READERS`. This module imports neither torch nor
onnxruntime until a model of a format that needs it is opened.

Every opened model has a **fingerprint** (:attr:`OpenedModel.fingerprint`), the sha256 that sample
files and partial evaluations record so that shards of different models are never joined:

- an ONNX file: the sha256 of the file (what ``sha256sum model.onnx`` prints);
- a refdiff checkpoint: the sha256 of the manifest ``sha256sum state.json <weights>`` of the
  checkpoint folder, ``<weights>`` the file whose weights were loaded (``ema.safetensors`` or
  ``model.safetensors``; ``state.json`` holds the configuration and seals every tensor file);
- a diffusers folder: the sha256 of the manifest of the files the model is read from
  (``model_index.json``, the UNet's ``config.json`` and weights, the scheduler config), named
  relative to the folder.

A manifest is ``sha256sum``'s output (``<hex>  <name>`` lines, in the order above), so
``sha256sum state.json ema.safetensors | sha256sum`` in the checkpoint folder prints the same
value. It is computed once per opened model, when first asked for.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._deps import MissingDependency
from .settings import Diffusion

__all__ = [
    "READERS",
    "ModelReader",
    "OpenedModel",
    "file_sha256",
    "manifest_sha256",
    "open_model",
    "reader_for",
]


@dataclass(frozen=True, eq=False)
class OpenedModel:
    """A model opened by :func:`open_model`.

    Attributes
    ----------
    path : Path
        What was opened.
    format : str
        The reader that opened it (``onnx``, ``diffusers``, ``refdiff``).
    diffusion : Diffusion
        Its settings.
    denoiser : callable
        ``denoiser(x, t) -> model_output`` on NumPy arrays (CuPy for an ONNX file on CUDA), with
        ``.diffusion`` and ``.xp``: what the samplers, the bound and the runtime take.
    module : torch.nn.Module or None
        The PyTorch module behind the denoiser (None for an ONNX file): what export needs.
    generator : OnnxGenerator or OnnxStepper or None
        For a generator or step file (``format`` ``generator`` or ``step``): the file's session;
        ``denoiser`` is then None (the sampler and the network run inside the graph).
    info : mapping
        What a report says about it: the checkpoint and its step, which weights, the device,
        notes on options refdiff does not follow.
    """

    path: Path
    format: str
    diffusion: Diffusion
    denoiser: Any
    module: Any = None
    info: Mapping[str, Any] = field(default_factory=dict)
    generator: Any = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """The sha256 (hex) that identifies this model's weights and settings: see the module's
        docstring for what each format hashes. Computed on first use, then kept."""
        name = "onnx" if self.format in ("generator", "step") else self.format  # one file too
        return next(r for r in READERS if r.name == name).fingerprint(self)

    def describe(self) -> str:
        """One line: the path, the format, the weights, T and the parameterisation."""
        d = self.diffusion
        if self.generator is not None:
            return (
                f"{self.path}: {self.generator.metadata.describe()}, T = {d.num_timesteps}, "
                f"{d.prediction.value} prediction, {d.variance.value} variance"
            )
        weights = self.info.get("weights")
        step = self.info.get("step")
        extra = "".join(
            [f", {weights} weights" if weights else "", f", step {step}" if step else ""]
        )
        return (
            f"{self.path}: {self.format} model{extra}, T = {d.num_timesteps}, "
            f"{d.prediction.value} prediction, {d.variance.value} variance"
        )


@dataclass(frozen=True)
class ModelReader:
    """One model format: its name, what its paths look like (for errors), the extra it needs,
    ``recognises(path) -> bool``, ``open(path, device=..., ema=..., session_options=...)`` and
    ``fingerprint(opened) -> str`` (the sha256 of the files it was read from)."""

    name: str
    looks_like: str
    extra: str
    recognises: Callable[[Path], bool]
    open: Callable[..., OpenedModel]
    fingerprint: Callable[[OpenedModel], str]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest_sha256(root: Path, files: Sequence[Path]) -> str:
    """The sha256 of ``sha256sum``'s output for ``files`` named relative to ``root``, in order."""
    lines = [f"{file_sha256(f)}  {os.path.relpath(f, root)}\n" for f in files]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _no_ema_option(path: Path, ema: bool | None, what: str) -> None:
    if ema is False:
        raise ValueError(
            f"--no-ema (raw weights) applies to refdiff checkpoints; {what} {str(path)!r} holds "
            "one set of weights"
        )


# -- the readers -----------------------------------------------------------------------------


def _is_onnx(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".onnx"


def _open_onnx(
    p: Path, *, device: str, ema: bool | None, session_options: Any = None
) -> OpenedModel:
    _no_ema_option(p, ema, "the ONNX file")
    from .onnx_contract import METADATA_KEY, file_kind, read_metadata_props

    kind = file_kind(read_metadata_props(p).get(METADATA_KEY))
    try:
        if kind != "denoiser":  # a generator file: the whole sampler inside
            return _open_generator(p, kind, device, session_options)
        from .runtime import OnnxDenoiser

        den = OnnxDenoiser(p, device=device, session_options=session_options)
    except MissingDependency:
        raise
    except ImportError as exc:  # onnxruntime missing
        raise MissingDependency(
            f"opening an ONNX model needs onnxruntime: pip install 'refdiff[onnx]' ({exc})"
        ) from exc
    info = {"kind": "onnx", "path": str(p), "device": den.device, "weights": den.metadata.dtype}
    return OpenedModel(p, "onnx", den.diffusion, den, None, info)


def _open_generator(p: Path, kind: str, device: str, session_options: Any) -> OpenedModel:
    """A generator file: no denoiser to call, the sampler runs inside (``generator``)."""
    from .runtime.generator import OnnxGenerator, OnnxStepper

    if device != "cpu":
        raise ValueError(f"generator files run on the CPU here; got device {device!r}")
    gen = (OnnxGenerator if kind == "generator" else OnnxStepper)(
        p, session_options=session_options
    )
    meta = gen.metadata
    info = {
        "kind": kind,
        "path": str(p),
        "device": "cpu",
        "weights": meta.denoiser.get("dtype", "float32"),
        "sampler": dict(meta.sampler),
    }
    return OpenedModel(p, kind, gen.diffusion, None, None, info, generator=gen)


def _fingerprint_onnx(model: OpenedModel) -> str:
    return file_sha256(model.path)


def _torch(format_name: str, extra: str) -> Any:
    """torch, or a one-line error naming the extra that brings it."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependency(
            f"a {format_name} model runs through PyTorch, which is not installed: pip install "
            f"'refdiff[{extra}]'; or open an exported .onnx file, which needs no PyTorch"
        ) from exc
    return torch


def _is_diffusers(p: Path) -> bool:
    from .diffusers_config import is_diffusers_folder

    return is_diffusers_folder(p)


def _open_diffusers(
    p: Path, *, device: str, ema: bool | None, session_options: Any = None
) -> OpenedModel:
    _no_ema_option(p, ema, "the diffusers folder")
    _torch("diffusers", "diffusers")
    from .export.diffusers import load_diffusers
    from .nn.numpy_bridge import TorchDenoiser

    loaded = load_diffusers(p, device=device, warn=False)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    info = {
        "kind": "diffusers",
        "path": str(p),
        "device": device,
        "weights": "diffusers UNet2DModel",
        "notes": list(loaded.notes),
    }
    den = TorchDenoiser(loaded.model, loaded.diffusion, device)
    return OpenedModel(p, "diffusers", loaded.diffusion, den, loaded.model, info)


def _fingerprint_diffusers(model: OpenedModel) -> str:
    from .diffusers_config import read_diffusers_folder

    folder = read_diffusers_folder(model.path)
    files = [model.path / "model_index.json"] if (model.path / "model_index.json").is_file() else []
    files.append(folder.unet_dir / "config.json")
    # the weights diffusers loads: safetensors when there are, else the pickled .bin
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder.unet_dir / name).is_file():
            files.append(folder.unet_dir / name)
            break
    if folder.scheduler_path is not None:
        files.append(folder.scheduler_path)
    return manifest_sha256(model.path, files)


def _is_refdiff(p: Path) -> bool:
    from .runs.folder import find_checkpoint

    if not p.is_dir():
        return False
    try:
        find_checkpoint(p)
    except (FileNotFoundError, ValueError):
        return (p / "config.json").is_file()  # a run folder without a checkpoint yet
    return True


def _checkpoint_info(p: Path) -> dict[str, Any]:
    """The checkpoint of a run or checkpoint folder, found without torch, and its step (the
    message of a run without a checkpoint says how to finish it)."""
    from .runs.folder import RunFolder, checkpoint_step, find_checkpoint

    ckpt = find_checkpoint(p)
    info: dict[str, Any] = {"checkpoint": str(ckpt)}
    try:
        info["step"] = checkpoint_step(ckpt)
        info["run_steps"] = RunFolder(ckpt.parent.parent).read_config().steps
    except (OSError, ValueError, TypeError):
        pass
    return info


def _open_refdiff(
    p: Path, *, device: str, ema: bool | None, session_options: Any = None
) -> OpenedModel:
    info = {"kind": "checkpoint", "path": str(p), "device": device, **_checkpoint_info(p)}
    _torch("refdiff checkpoint", "torch")
    from .nn.numpy_bridge import TorchDenoiser
    from .training.checkpoint import load_model

    use_ema = ema is not False
    model, diffusion = load_model(info["checkpoint"], ema=use_ema, device=device)
    info["weights"] = "EMA" if use_ema else "raw"
    den = TorchDenoiser(model, diffusion, device)
    return OpenedModel(p, "refdiff", diffusion, den, model, info)


def _fingerprint_refdiff(model: OpenedModel) -> str:
    ckpt = Path(model.info["checkpoint"])
    weights = "ema.safetensors" if model.info.get("weights") == "EMA" else "model.safetensors"
    return manifest_sha256(ckpt, [ckpt / "state.json", ckpt / weights])


#: Every format, tried in this order; the first that recognises a path opens it.
READERS: tuple[ModelReader, ...] = (
    ModelReader(
        "onnx",
        "an .onnx file written by `refdiff export`",
        "onnx",
        _is_onnx,
        _open_onnx,
        _fingerprint_onnx,
    ),
    ModelReader(
        "diffusers",
        "a diffusers DDPM/DDIM pipeline folder or UNet2DModel folder",
        "diffusers",
        _is_diffusers,
        _open_diffusers,
        _fingerprint_diffusers,
    ),
    ModelReader(
        "refdiff",
        "a training run folder or one of its checkpoints/ckpt-* folders",
        "torch",
        _is_refdiff,
        _open_refdiff,
        _fingerprint_refdiff,
    ),
)


def reader_for(path: str | os.PathLike[str]) -> ModelReader:
    """The reader of the model at ``path``, without opening it (nothing heavy is imported).

    Raises
    ------
    FileNotFoundError
        No such path.
    ValueError
        A path no reader recognises (the message lists what each format looks like).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such model: {str(path)!r}")
    for reader in READERS:
        if reader.recognises(p):
            return reader
    kinds = "; ".join(r.looks_like for r in READERS)
    raise ValueError(f"{str(path)!r} is not a model refdiff can open: expected {kinds}")


def open_model(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    ema: bool | None = None,
    session_options: Any = None,
) -> OpenedModel:
    """Open the model at ``path`` (any format of :data:`READERS`).

    Parameters
    ----------
    path : str or PathLike
    device : str
        ``"cpu"``, or ``"cuda"`` / ``"cuda:N"``.
    ema : bool, optional
        For refdiff checkpoints: the EMA weights (default) or, with False, the raw ones; False
        for another format is an error.
    session_options : onnxruntime.SessionOptions, optional
        For ONNX files: threads and the like.

    Raises
    ------
    FileNotFoundError, ValueError
        No such path, an unrecognised one, or a model that is not whole (the message names the
        file and the problem).
    refdiff._deps.MissingDependency
        The format needs a package that is not installed (the message names the extra).
    """
    p = Path(path)
    return reader_for(p).open(p, device=device, ema=ema, session_options=session_options)
