"""Training the PyTorch U-Net with the core's noising and losses.

- :mod:`.trainer`: :class:`Trainer`, :func:`train`: the loop (logs, evaluation, samples, DDP);
- :mod:`.step`: :class:`TrainState`: the weights, EMA, optimiser and the step itself;
- :mod:`.data`: the train / held-out split and the data order;
- :mod:`.checkpoint`: :func:`load_checkpoint`, :func:`load_model`, :func:`save_checkpoint`;
- :mod:`.distributed`: torchrun process groups.

What a run *is* (:class:`~refdiff.runs.TrainConfig`, recipes) and where it lives (the run folder)
are torch-free, in :mod:`refdiff.runs`; the command is :mod:`refdiff.commands.train`. The names
below are imported lazily (PEP 562), so importing the package does not import torch; touching any
name below does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainState": "step",
    "Trainer": "trainer",
    "train": "trainer",
    "load_training_data": "data",
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
