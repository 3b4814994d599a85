"""Checkpoints: safetensors plus JSON, written atomically, verified before anything is loaded.

Layout of a run folder and of one checkpoint::

    <run>/config.json                       the run's TrainConfig
    <run>/checkpoints/ckpt-00001500/
        model.safetensors                   the trained weights
        ema.safetensors                     the exponential moving average of the weights
        optimizer.safetensors               every tensor of the optimiser state, named
                                            "state.<param index>.<name>" (exp_avg, step, ...)
        state.json                          step, TrainConfig, timestep-sampler state, NumPy and
                                            torch RNG states, the optimiser's non-tensor parts,
                                            the sha256 of every other file, and the sha256 of
                                            its own content ("state_sha256")

No pickle anywhere (``torch.load`` is never called). A checkpoint is written into a temporary
folder next to its final place, every file and the folder are fsync'ed, and the folder is renamed
into place, so a crash leaves either the whole checkpoint or none of it; only the last K are
kept. Loading reads every file, checks every hash and only then parses anything, so a truncated
or corrupted checkpoint is a ``ValueError`` naming the bad file, never a half-loaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..config import DiffusionConfig
from ..nn.unet import UNet
from .config import TrainConfig, config_differences

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "check_same_config",
    "checkpoint_name",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "refdiff-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})$")
_TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}"


# --------------------------------------------------------------------------------------------
# Optimiser state <-> named tensors + JSON
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
    An existing checkpoint of the same step is replaced.
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
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
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
        "files": {name: _sha256(data) for name, data in blobs.items()},
    }
    state["state_sha256"] = _sha256(_canonical(state))
    blobs["state.json"] = json.dumps(state, indent=1, sort_keys=True).encode("utf-8")

    parent = Path(run_dir) / "checkpoints"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / checkpoint_name(int(step))
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=parent))
    try:
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for stale in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete temporary folders left by a checkpoint write that was interrupted."""
    parent = Path(run_dir) / "checkpoints"
    if parent.is_dir():
        for p in parent.iterdir():
            if p.is_dir() and p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Finding and loading
# --------------------------------------------------------------------------------------------


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first (by step)."""
    parent = Path(run_dir) / "checkpoints"
    if not parent.is_dir():
        return []
    found = []
    for p in parent.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder named by ``path``: a checkpoint folder itself, or the latest one of
    a run folder (or of its ``checkpoints`` folder).

    Raises ``FileNotFoundError`` when there is none.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such run or checkpoint folder: {str(p)!r}")
    if (p / "state.json").is_file() or _NAME.match(p.name):
        return p
    run = p.parent if p.name == "checkpoints" else p
    found = list_checkpoints(run)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {str(p)!r} (expected checkpoints/ckpt-*/)")
    return found[-1]


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
    def diffusion(self) -> DiffusionConfig:
        return self.config.diffusion


def _corrupt(file: Path, why: str) -> ValueError:
    return ValueError(f"checkpoint file {str(file)!r} is truncated or corrupted: {why}")


def _read_verified(ckpt: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read state.json and every file it lists, checking every hash; parse nothing else yet."""
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        raise ValueError(f"{str(ckpt)!r} is not a complete checkpoint: state.json is missing")
    raw = state_file.read_bytes()
    try:
        state = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(state_file, f"not valid JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise _corrupt(state_file, f"not a {CHECKPOINT_FORMAT} state file")
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(state_file)!r} has checkpoint format version {state.get('version')}; this "
            f"refdiff reads version {FORMAT_VERSION}"
        )
    claimed = state.pop("state_sha256", None)
    if claimed != _sha256(_canonical(state)):
        raise _corrupt(state_file, "its content does not match its own sha256")
    files = state.get("files")
    if not isinstance(files, dict) or set(files) != set(_TENSOR_FILES):
        raise _corrupt(state_file, f"it must list the files {list(_TENSOR_FILES)}")
    blobs = {}
    for name in _TENSOR_FILES:
        f = ckpt / name
        if not f.is_file():
            raise ValueError(f"checkpoint {str(ckpt)!r} is incomplete: {name} is missing")
        data = f.read_bytes()
        digest = _sha256(data)
        if digest != files[name]:
            raise _corrupt(
                f,
                f"sha256 {digest[:16]}… ({len(data)} bytes) differs from the recorded "
                f"{files[name][:16]}…",
            )
        blobs[name] = data
    return state, blobs


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (a checkpoint folder, or the latest one of a run folder).

    Every file's sha256 is checked before anything is parsed; a mismatch, a missing file or an
    unreadable state is a ``ValueError`` naming the file.
    """
    ckpt = latest_checkpoint(path)
    state, blobs = _read_verified(ckpt)
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
) -> tuple[UNet, DiffusionConfig]:
    """The U-Net of a checkpoint (EMA weights by default), in eval mode, and its diffusion config.

    ``path`` is a run folder (its latest checkpoint is used) or a checkpoint folder.
    """
    ckpt = load_checkpoint(path)
    model = UNet(ckpt.config.unet)
    model.load_state_dict(ckpt.ema_state if ema else ckpt.model_state, strict=True)
    model.to(device).eval()
    return model, ckpt.config.diffusion
