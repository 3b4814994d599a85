"""Training the PyTorch U-Net with the core's noising and losses.

- :class:`TrainConfig`, :func:`resolve_config`, :data:`RECIPES`: what a run is;
- :class:`Trainer`, :func:`train`: the loop (EMA, warm-up, clipping, evaluation, samples, DDP);
- :func:`load_checkpoint`, :func:`latest_checkpoint`, :func:`load_model`: reading runs back.

The names are imported lazily (PEP 562), so ``import refdiff.training.cli`` (which the ``refdiff``
command does for ``--help``) does not import torch; touching any name below does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "list_checkpoints": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "RECIPES": "config",
    "RESUMABLE_KEYS": "config",
    "TrainConfig": "config",
    "load_config_file": "config",
    "resolve_config": "config",
    "Trainer": "trainer",
    "load_training_data": "trainer",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refdiff.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
