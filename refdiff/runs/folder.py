"""The layout of a training run folder and its checkpoints, readable without PyTorch.

::

    <run>/config.json                       the run's TrainConfig
    <run>/metrics.jsonl                     one JSON line per log interval and per evaluation
    <run>/samples/samples-<step>.png        sample grids (and trajectory-<step>.png)
    <run>/checkpoints/ckpt-00001500/
        model.safetensors                   the trained weights
        ema.safetensors                     the exponential moving average of the weights
        optimizer.safetensors               every tensor of the optimiser state, named
                                            "state.<param index>.<name>" (exp_avg, step, ...)
        state.json                          step, TrainConfig, timestep-sampler state, NumPy and
                                            torch RNG states, the optimiser's non-tensor parts,
                                            the sha256 of every other file, and the sha256 of
                                            its own content ("state_sha256")

A checkpoint is written into a temporary folder next to its final place, every file and the
folder are fsync'ed, and the folder is renamed into place (:func:`write_checkpoint_folder`), so a
crash leaves either the whole checkpoint or none of it. Reading (:func:`read_checkpoint_files`)
checks every hash before anything is parsed, so a truncated or corrupted checkpoint is a
``ValueError`` naming the bad file.

Everything here is JSON, hashes and paths: the trainer, ``refdiff export``, ``refdiff eval`` and
``refdiff demo`` share it, and a run's settings load in a process without torch
(:func:`read_run_config`). The tensors themselves are read by :mod:`refdiff.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import OutputError, describe_os_error, fsync_dir, make_dir
from .train_config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "TENSOR_FILES",
    "RunFolder",
    "checkpoint_name",
    "checkpoint_step",
    "find_checkpoint",
    "read_checkpoint_files",
    "read_run_config",
    "remove_stale_temporaries",
    "write_checkpoint_folder",
]

CHECKPOINT_FORMAT = "refdiff-checkpoint"
CHECKPOINT_VERSION = 1
TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")
_NAME = re.compile(r"^ckpt-(\d{8,})$")
_STALE = (".tmp-", ".old-")


def checkpoint_name(step: int) -> str:
    """``ckpt-00001500`` for step 1500."""
    return f"ckpt-{step:08d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step of a checkpoint folder named ``ckpt-<step>``."""
    m = _NAME.match(Path(path).name)
    if not m:
        raise ValueError(f"{str(path)!r} is not named like a checkpoint (ckpt-<step>)")
    return int(m.group(1))


@dataclass(frozen=True)
class RunFolder:
    """A training run's folder and the places of its files."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / checkpoint_name(step)

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders, oldest first (by step)."""
        parent = self.checkpoints_dir
        if not parent.is_dir():
            return []
        found = []
        for p in parent.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def holds_run(self) -> bool:
        """True when the folder holds a run (a config or a checkpoint)."""
        return self.config_file.is_file() or bool(self.checkpoints())

    def read_config(self) -> TrainConfig:
        """The run's ``config.json`` as a :class:`TrainConfig` (no torch needed)."""
        try:
            text = self.config_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{str(self.path)!r} has no config.json: not a run folder"
            ) from None
        try:
            return TrainConfig.from_json(text)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{str(self.config_file)!r} is not a readable run config: {exc}"
            ) from exc


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder named by ``path``: a checkpoint folder itself, or the latest one of
    a run folder (or of its ``checkpoints`` folder).

    Raises ``FileNotFoundError`` when there is none, and ``ValueError`` (with what to do) for a
    run folder whose training has not reached its first checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such run or checkpoint folder: {str(p)!r}")
    if (p / "state.json").is_file() or _NAME.match(p.name):
        return p
    run = RunFolder(p.parent if p.name == "checkpoints" else p)
    found = run.checkpoints()
    if found:
        return found[-1]
    if run.config_file.is_file():
        raise ValueError(
            f"the run folder {str(run.path)!r} has no checkpoint yet: its training has not "
            "finished (nor reached its first checkpoint). Finish or resume it with "
            f"`refdiff train --out {run.path} --resume`"
        )
    raise FileNotFoundError(
        f"no checkpoint under {str(p)!r}: expected a training run folder (config.json and "
        "checkpoints/ckpt-*/) or a checkpoint folder (state.json)"
    )


def read_run_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The :class:`TrainConfig` of a run folder or of a checkpoint, without torch.

    A checkpoint's own ``state.json`` (hash-checked) is the authority; a run folder's
    ``config.json`` is used when it has no checkpoint yet.
    """
    p = Path(path)
    try:
        ckpt = find_checkpoint(p)
    except ValueError:
        return RunFolder(p).read_config()
    state, _ = read_checkpoint_files(ckpt, tensors=False)
    try:
        return TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"checkpoint {str(ckpt)!r} holds a config this refdiff cannot read: {exc}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal_state(state: Mapping[str, Any], blobs: Mapping[str, bytes]) -> bytes:
    """``state.json``'s bytes: ``state`` with the format, the sha256 of each blob and of itself."""
    st = dict(state)
    st["format"] = CHECKPOINT_FORMAT
    st["version"] = CHECKPOINT_VERSION
    st["files"] = {name: _sha256(data) for name, data in blobs.items()}
    st["state_sha256"] = _sha256(_canonical(st))
    return json.dumps(st, indent=1, sort_keys=True).encode("utf-8")


def _corrupt(file: Path, why: str) -> ValueError:
    return ValueError(f"checkpoint file {str(file)!r} is truncated or corrupted: {why}")


def read_checkpoint_files(
    ckpt: str | os.PathLike[str], *, tensors: bool = True
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read ``state.json`` and (with ``tensors``) every file it lists, checking every hash;
    parse nothing else. Returns the state (without its own hash) and the files' bytes."""
    ckpt = Path(ckpt)
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
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(state_file)!r} has checkpoint format version {state.get('version')}; this "
            f"refdiff reads version {CHECKPOINT_VERSION}"
        )
    claimed = state.pop("state_sha256", None)
    if claimed != _sha256(_canonical(state)):
        raise _corrupt(state_file, "its content does not match its own sha256")
    files = state.get("files")
    if not isinstance(files, dict) or set(files) != set(TENSOR_FILES):
        raise _corrupt(state_file, f"it must list the files {list(TENSOR_FILES)}")
    blobs = {}
    for name in TENSOR_FILES if tensors else ():
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_checkpoint_folder(
    run_dir: str | os.PathLike[str],
    step: int,
    state: Mapping[str, Any],
    blobs: Mapping[str, bytes],
    *,
    keep: int | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/ckpt-<step>/`` atomically and return its path.

    ``blobs`` are the tensor files (:data:`TENSOR_FILES`), ``state`` the rest of ``state.json``.
    The folder gets the permissions a new folder would get (the umask). An existing checkpoint
    of the same step is replaced; with ``keep``, all but the last ``keep`` checkpoints are
    deleted afterwards. An ``OSError`` (full disk, permissions) leaves no partial checkpoint and
    becomes an ``OutputError`` naming the folder.
    """
    run = RunFolder(run_dir)
    parent = make_dir(run.checkpoints_dir)
    final = run.checkpoint(int(step))
    files = {**blobs, "state.json": seal_state(state, blobs)}
    try:  # mkdir applies the umask to the folder's mode (mkdtemp would make it 0700)
        tmp = parent / f".tmp-{final.name}-{secrets.token_hex(6)}"
        tmp.mkdir()
    except OSError as exc:
        raise OutputError(describe_os_error(exc, final, "write the checkpoint")) from None
    try:
        for name, data in files.items():
            _write_synced(tmp / name, data)
        fsync_dir(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(describe_os_error(exc, final, "write the checkpoint")) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for stale in run.checkpoints()[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> None:
    """Delete temporary folders left by a checkpoint write that was interrupted."""
    parent = RunFolder(run_dir).checkpoints_dir
    if parent.is_dir():
        for p in parent.iterdir():
            if p.is_dir() and p.name.startswith(_STALE):
                shutil.rmtree(p, ignore_errors=True)
