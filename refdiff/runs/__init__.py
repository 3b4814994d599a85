"""What a training run is and where it lives, readable without PyTorch.

- :mod:`.unet_config`: :class:`UNetConfig` and the U-Net presets;
- :mod:`.train_config`: :class:`TrainConfig`, the recipes, config files and their resolution;
- :mod:`.folder`: :class:`RunFolder`, the layout of a run folder and its checkpoints, and reading
  a checkpoint's verified state.

The trainer, ``refdiff export``, ``refdiff eval`` and ``refdiff demo`` share these; a process
without torch can read a run's settings (:func:`read_run_config`).
"""

from __future__ import annotations

from .folder import RunFolder, find_checkpoint, read_run_config
from .train_config import (
    RECIPES,
    RESUMABLE_KEYS,
    TrainConfig,
    config_differences,
    load_config_file,
    resolve_config,
)
from .unet_config import PRESETS, UNetConfig, preset

__all__ = [
    "PRESETS",
    "RECIPES",
    "RESUMABLE_KEYS",
    "RunFolder",
    "TrainConfig",
    "UNetConfig",
    "config_differences",
    "find_checkpoint",
    "load_config_file",
    "preset",
    "read_run_config",
    "resolve_config",
]
