"""PyTorch -> ONNX export of refdiff denoisers, with metadata, a parity check and fp16.

Installed as ``refdiff.export`` (needs the ``torch`` extra: torch, onnx, onnxscript; and
onnxruntime for :func:`verify_onnx`). The names below are imported on first use, so that
``refdiff.export.cli`` (and with it ``refdiff --help``) never imports torch.

- :func:`export_onnx`: one self-describing ``.onnx`` file (docs/onnx.md gives the contract);
- :func:`verify_onnx`: onnxruntime against PyTorch, a :class:`ParityReport`, :class:`ParityError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .onnx_export import (
        DEFAULT_TOLERANCES,
        MAX_MODEL_BYTES,
        ParityCase,
        ParityError,
        ParityReport,
        export_onnx,
        verify_onnx,
    )

__all__ = [
    "DEFAULT_TOLERANCES",
    "MAX_MODEL_BYTES",
    "ParityCase",
    "ParityError",
    "ParityReport",
    "export_onnx",
    "verify_onnx",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".onnx_export", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
