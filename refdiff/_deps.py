"""Optional dependencies: import one where it is used, or fail with the extra that installs it.

The base install of refdiff is the core's (NumPy, SciPy, array-api-compat). Everything else comes
with an extra, and a missing one is an ``ImportError`` that says which:

=============  ===============================================  =========================
extra          brings                                           for
=============  ===============================================  =========================
``data``       Pillow, scikit-learn                             dataset readers, PNG grids
``onnx``       onnxruntime, onnx, Pillow, tqdm                  torch-free sampling (CPU),
                                                                generator graphs
``cuda12/13``  CuPy, onnxruntime-gpu, onnx, Pillow, tqdm        torch-free sampling (GPU)
``openvino``   OpenVINO, the ``onnx`` extra                      bfloat16 files on CPUs
``eval``       the ``data`` extra, matplotlib, tqdm             ``refdiff eval``, plots
``torch``      PyTorch, safetensors, onnx, the ``eval`` extra   training, export, the demo
``diffusers``  diffusers (with the ``torch`` extra)             diffusers models in
=============  ===============================================  =========================
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependency", "require"]

#: module -> the pip distribution that provides it, where the names differ
_DISTRIBUTIONS = {
    "PIL": "Pillow",
    "sklearn": "scikit-learn",
    "cupy": "cupy-cuda12x or cupy-cuda13x",
}


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependency` naming ``pip install
    "refdiff[extra]"`` and what it was needed for."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the module is there but broken: show the real error
        dist = _DISTRIBUTIONS.get(top, top)
        raise MissingDependency(
            f'{purpose} needs {dist}, which is not installed: pip install "refdiff[{extra}]"',
            name=top,
        ) from None
