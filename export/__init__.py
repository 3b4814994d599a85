"""PyTorch -> ONNX export of refdiff denoisers, with metadata, a parity check and fp16.

Installed as ``refdiff.export`` (needs the ``torch`` extra: torch, onnx, onnxscript; and
onnxruntime for :func:`verify_onnx`). The names below are imported on first use, so that
importing the package (``refdiff export --help`` does) never imports torch.

- :mod:`.onnx_export`: :func:`export_onnx`, one self-describing ``.onnx`` file (the contract is
  :mod:`refdiff.onnx_contract`; docs/onnx.md explains it);
- :mod:`.parity`: :func:`verify_onnx`, onnxruntime against PyTorch, a :class:`ParityReport`,
  :class:`ParityError`;
- :mod:`.diffusers`: :func:`load_diffusers`, a diffusers pipeline or UNet folder as a denoiser
  module and its settings (needs the ``diffusers`` extra).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .diffusers import DiffusersDenoiser, LoadedDiffusers, load_diffusers, wrap_unet
    from .onnx_export import MAX_MODEL_BYTES, export_onnx
    from .parity import DEFAULT_TOLERANCES, ParityCase, ParityError, ParityReport, verify_onnx

_EXPORTS = {
    "DiffusersDenoiser": "diffusers",
    "LoadedDiffusers": "diffusers",
    "load_diffusers": "diffusers",
    "wrap_unet": "diffusers",
    "MAX_MODEL_BYTES": "onnx_export",
    "export_onnx": "onnx_export",
    "DEFAULT_TOLERANCES": "parity",
    "ParityCase": "parity",
    "ParityError": "parity",
    "ParityReport": "parity",
    "verify_onnx": "parity",
}

__all__ = [
    "DEFAULT_TOLERANCES",
    "MAX_MODEL_BYTES",
    "DiffusersDenoiser",
    "LoadedDiffusers",
    "ParityCase",
    "ParityError",
    "ParityReport",
    "export_onnx",
    "load_diffusers",
    "verify_onnx",
    "wrap_unet",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
