"""Checkpoints of the PyTorch trainer: safetensors tensors plus JSON, verified before loading.

The folder layout, the hashes and the atomic write are :mod:`refdiff.runs.folder` (torch-free);
this module turns modules, optimisers and RNG states into those files and back. No pickle anywhere
(``torch.load`` is never called): a truncated or corrupted checkpoint is a ``ValueError`` naming
the bad file, never a half-loaded model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..nn.unet import UNet
from ..runs.folder import find_checkpoint, read_checkpoint_files, write_checkpoint_folder
from ..runs.train_config import TrainConfig, config_differences
from ..settings import Diffusion

__all__ = [
    "Checkpoint",
    "check_same_config",
    "load_checkpoint",
    "load_model",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "save_checkpoint",
]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot store {type(v).__name__} {v!r} in a checkpoint's JSON")


def optimizer_state_to_tensors(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-serialisable rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in state_dict["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = _jsonable(value)
    groups = []
    for g in state_dict["param_groups"]:
        groups.append({k: _jsonable(v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_tensors(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise ValueError(f"unexpected tensor {key!r} in optimizer.safetensors")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _state_tensors(module_or_state: Any) -> dict[str, torch.Tensor]:
    sd = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: Any,
    ema: Any,
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    config: TrainConfig,
    timestep_sampler: Mapping[str, Any],
    numpy_rng: Mapping[str, Any],
    torch_rng: torch.Tensor | None = None,
    cuda_rng: list[torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/ckpt-<step>/`` atomically and return its path.

    ``model`` and ``ema`` are modules (or their state dicts), ``optimizer`` an optimiser (or its
    state dict). If ``keep`` is given, older checkpoints beyond the last ``keep`` are deleted.
    An existing checkpoint of the same step is replaced. The folder layout and the atomic write
    are :mod:`refdiff.runs.folder`'s.
    """
    opt_sd = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    opt_tensors, opt_meta = optimizer_state_to_tensors(opt_sd)
    blobs = {
        "model.safetensors": st_save(_state_tensors(model)),
        "ema.safetensors": st_save(_state_tensors(ema)),
        "optimizer.safetensors": st_save(opt_tensors),
    }
    if torch_rng is None:
        torch_rng = torch.get_rng_state()
    state: dict[str, Any] = {
        "step": int(step),
        "config": config.to_dict(),
        "timestep_sampler": _jsonable(dict(timestep_sampler)),
        "numpy_rng": _jsonable(dict(numpy_rng)),
        "torch_rng": [int(v) for v in torch_rng.to(torch.uint8).tolist()],
        "cuda_rng": None
        if cuda_rng is None
        else [[int(v) for v in s.to(torch.uint8).tolist()] for s in cuda_rng],
        "optimizer": opt_meta,
        "extra": _jsonable(dict(extra or {})),
    }
    return write_checkpoint_folder(run_dir, step, state, blobs, keep=keep)


@dataclass
class Checkpoint:
    """A verified checkpoint, fully in memory (tensors on the CPU)."""

    path: Path
    step: int
    config: TrainConfig
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    timestep_sampler: dict[str, Any]
    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def diffusion(self) -> Diffusion:
        return self.config.diffusion


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (a checkpoint folder, or the latest one of a run folder).

    Every file's sha256 is checked before anything is parsed; a mismatch, a missing file or an
    unreadable state is a ``ValueError`` naming the file.
    """
    ckpt = find_checkpoint(path)
    state, blobs = read_checkpoint_files(ckpt)
    try:
        tensors = {name: st_load(data) for name, data in blobs.items()}
    except SafetensorError as exc:  # hashes matched, so the writer wrote garbage
        raise ValueError(
            f"checkpoint {str(ckpt)!r} holds an unreadable safetensors file: {exc}"
        ) from exc
    try:
        config = TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"checkpoint {str(ckpt)!r} holds a config this refdiff cannot read: {exc}"
        ) from exc
    cuda = state.get("cuda_rng")
    return Checkpoint(
        path=ckpt,
        step=int(state["step"]),
        config=config,
        model_state=tensors["model.safetensors"],
        ema_state=tensors["ema.safetensors"],
        optimizer_state=optimizer_state_from_tensors(
            tensors["optimizer.safetensors"], state["optimizer"]
        ),
        timestep_sampler=state["timestep_sampler"],
        numpy_rng=state["numpy_rng"],
        torch_rng=torch.tensor(state["torch_rng"], dtype=torch.uint8),
        cuda_rng=None if cuda is None else [torch.tensor(s, dtype=torch.uint8) for s in cuda],
        extra=state.get("extra", {}),
    )


def check_same_config(saved: TrainConfig, current: TrainConfig, *, where: str) -> None:
    """Raise ``ValueError`` naming the keys in which ``current`` differs from ``saved``
    (keys a resumed run may change, like ``steps``, are ignored)."""
    diffs = config_differences(saved, current)
    if diffs:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diffs.items())
        raise ValueError(f"{where} was written by another configuration; differing keys: {shown}")


def load_model(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[UNet, Diffusion]:
    """The U-Net of a checkpoint (EMA weights by default), in eval mode, and its diffusion config.

    ``path`` is a run folder (its latest checkpoint is used) or a checkpoint folder.
    """
    ckpt = load_checkpoint(path)
    model = UNet(ckpt.config.unet)
    model.load_state_dict(ckpt.ema_state if ema else ckpt.model_state, strict=True)
    model.to(device).eval()
    return model, ckpt.config.diffusion
