"""ONNX graphs built in code: the foundation of refdiff's generator files (docs/graph.md).

- :mod:`.builder`: :class:`GraphBuilder` (unique names, constants, nodes, Loop/If bodies, a
  checked model at opset 18) and embedding an exported denoiser as a call (:class:`EmbeddedModel`);
- :mod:`.noise`: refdiff's counter-based Philox noise as ONNX nodes (:func:`standard_normal`,
  :func:`philox_words`), equal to :func:`refdiff.noise.standard_normal`.

This package imports onnx (``pip install "refdiff[onnx]"``), never torch.
"""

from __future__ import annotations

from .builder import OPSET, EmbeddedModel, GraphBuilder, elem_type
from .noise import philox_words, standard_normal

__all__ = [
    "OPSET",
    "EmbeddedModel",
    "GraphBuilder",
    "elem_type",
    "philox_words",
    "standard_normal",
]
