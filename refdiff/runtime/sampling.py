"""Sample many images from a denoiser: chunks of bounded memory, shards, uint8 output files.

:func:`sample_images` runs the core's samplers (:mod:`refdiff.samplers`) around a denoiser such as
:class:`~refdiff.runtime.OnnxDenoiser`, on the denoiser's own array namespace (NumPy on the CPU,
CuPy on a GPU). Every sample has a global index and its noise is a pure function of (seed, index,
step), so

- the batch size only bounds memory: it never changes a sample;
- ``shard=(k, N)`` draws the contiguous block ``k`` of ``N`` of the indices ``0 … n-1``, and the
  shards ``0 … N-1`` concatenated are exactly the samples of the unsharded run.

No torch here, nor anywhere this module imports.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._array import to_host
from .._checks import check_int
from .._docstrings import parameters_from
from .._enums import Spacing
from .._io import check_output_file, created_folder, write_npz
from ..sampler_loop import Callback
from ..sampler_registry import SamplerChoice, SamplerSpec
from ..settings import Diffusion

__all__ = [
    "LAUNCHERS",
    "Denoiser",
    "check_output_path",
    "parse_shard",
    "sample_array",
    "sample_images",
    "save_samples",
    "shard_from_environment",
    "shard_range",
    "to_uint8",
]


class Denoiser(Protocol):
    """What :func:`sample_images` needs: ``(x, t) -> model_output`` plus the model's settings.

    Called as ``denoiser(x, t)`` with images ``x`` [B, C, H, W] (float32, of the namespace
    ``xp``) and the model's timestep indices ``t`` (int64 [B]), it returns the model output
    [B, C, H, W] (or [B, 2C, H, W] with a learned variance) of ``x``'s namespace.
    :class:`~refdiff.runtime.OnnxDenoiser` is one.

    Attributes
    ----------
    diffusion : Diffusion
        The model's settings (schedule, parameterisation, image shape, data range).
    xp : module, optional
        The array namespace the denoiser takes (NumPy or CuPy); NumPy when absent.
    """

    diffusion: Diffusion

    def __call__(self, x: Any, t: Any) -> Any: ...


#: The launchers ``--shard auto`` reads, in order of precedence within one job: the first whose
#: size variable is set gives the process's (rank, world size). torchrun comes first: started by
#: srun once per node it sets a global RANK, while SLURM_PROCID then counts nodes.
LAUNCHERS: tuple[tuple[str, str, str], ...] = (
    ("torchrun", "RANK", "WORLD_SIZE"),
    ("srun", "SLURM_PROCID", "SLURM_NTASKS"),
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("MPICH, Intel MPI", "PMI_RANK", "PMI_SIZE"),
)
#: A Slurm job array splits the run across jobs; each job's processes split its share.
SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"shard 'auto': {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"shard 'auto': {name}={raw!r} must be >= {minimum}")
    return value


def _job_rank(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(rank, world size, where from) of the first launcher of :data:`LAUNCHERS` that is set."""
    for name, rank_var, size_var in LAUNCHERS:
        has_rank, has_size = (
            bool(env.get(rank_var, "").strip()),
            bool(env.get(size_var, "").strip()),
        )
        if not has_size:
            # sbatch sets SLURM_PROCID=0 in a batch script even without --ntasks: no split
            if has_rank and not (rank_var == "SLURM_PROCID" and env[rank_var].strip() == "0"):
                raise ValueError(
                    f"shard 'auto': {rank_var} is set ({env[rank_var]!r}) but {size_var} is not "
                    f"({name} sets both)"
                )
            continue
        if not has_rank:
            raise ValueError(
                f"shard 'auto': {size_var} is set ({env[size_var]!r}) but {rank_var} is not "
                f"({name} sets both)"
            )
        rank, size = _env_int(env, rank_var, 0), _env_int(env, size_var, 1)
        if rank >= size:
            raise ValueError(
                f"shard 'auto': {rank_var}={rank} must be below {size_var}={size} ({name})"
            )
        return rank, size, f"{rank_var}={rank}, {size_var}={size} ({name})"
    return None


def _array_task(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(task, task count, where from) of a Slurm job array; ``--array=0-7`` gives tasks 0..7 of 8
    (any start and step: ``--array=1-15:2`` gives 0..7 too)."""
    id_var, count_var = SLURM_ARRAY
    has_id, has_count = bool(env.get(id_var, "").strip()), bool(env.get(count_var, "").strip())
    if not (has_id or has_count):
        return None
    if not (has_id and has_count):
        present, absent = (id_var, count_var) if has_id else (count_var, id_var)
        raise ValueError(
            f"shard 'auto': {present} is set ({env[present]!r}) but {absent} is not (a Slurm "
            "job array sets both)"
        )
    task, count = _env_int(env, id_var, 0), _env_int(env, count_var, 1)
    lo = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0) if env.get("SLURM_ARRAY_TASK_MIN") else 0
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1) if env.get("SLURM_ARRAY_TASK_STEP") else 1
    hi = _env_int(env, "SLURM_ARRAY_TASK_MAX", 0) if env.get("SLURM_ARRAY_TASK_MAX") else None
    where = f"{id_var}={task}, {count_var}={count}"
    if hi is not None and hi - lo != (count - 1) * step:
        raise ValueError(
            f"shard 'auto': the Slurm array's task ids are not evenly spaced (min {lo}, max {hi}, "
            f"step {step}, {count} tasks): use --array=0-{count - 1}"
        )
    k, off = divmod(task - lo, step)
    if off or not 0 <= k < count:
        raise ValueError(
            f"shard 'auto': {id_var}={task} is not one of the {count} tasks of the array "
            f"(min {lo}, step {step}): use --array=0-{count - 1}"
        )
    return k, count, where + (f" (array from {lo}, step {step})" if (lo, step) != (0, 1) else "")


def shard_from_environment(env: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """The shard ``(K, N)`` of this process from its launcher's environment, and where it came from.

    Within one job the first of :data:`LAUNCHERS` whose size variable is set gives ``(rank,
    world)``: torchrun's ``RANK``/``WORLD_SIZE``, then Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``
    (srun), then Open MPI's and PMI's. A Slurm job array (``SLURM_ARRAY_TASK_ID``/
    ``SLURM_ARRAY_TASK_COUNT``) splits the run across jobs first: task ``a`` of ``A`` running
    ``world`` processes is shard ``a * world + rank`` of ``A * world``, so an array of
    torchrun jobs needs nothing more. No variable set, half a pair set, a value that is not an
    integer or a rank out of range is a ``ValueError`` naming the variables.
    """
    env = os.environ if env is None else env
    job, array = _job_rank(env), _array_task(env)
    if job is None and array is None:
        pairs = ", ".join(f"{r}/{s} ({name})" for name, r, s in LAUNCHERS)
        raise ValueError(
            "shard 'auto': no launcher in the environment; expected "
            f"{SLURM_ARRAY[0]}/{SLURM_ARRAY[1]} (a Slurm job array) or one of {pairs}; "
            "or give the shard as K/N"
        )
    rank, world, job_where = job if job is not None else (0, 1, "")
    task, tasks, array_where = array if array is not None else (0, 1, "")
    where = "; ".join(w for w in (array_where, job_where) if w)
    return task * world + rank, tasks * world, where


def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """A shard as ``(K, N)``: shard K (from 0, like process ranks) of N.

    Parameters
    ----------
    spec : str, (K, N) or None
        ``"K/N"`` (``--shard $RANK/$WORLD_SIZE``), a pair of ints, ``"auto"`` (the launcher's
        environment: :func:`shard_from_environment`), or None.

    Returns
    -------
    (int, int) or None
        ``(K, N)`` with ``0 <= K < N``; None for None.

    Raises
    ------
    ValueError
        For a malformed spec or K outside [0, N).
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        k, n, _ = shard_from_environment()
        return k, n
    if isinstance(spec, str):
        parts = spec.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                "shard must look like K/N (shard K of N, K counted from 0, e.g. 0/4) or be "
                f"'auto' (from the launcher's environment), got {spec!r}"
            )
        k, n = (int(p) for p in parts)
    else:
        try:
            k, n = spec
        except (TypeError, ValueError):
            raise ValueError(f"shard must be (K, N) or 'K/N', got {spec!r}") from None
        k = check_int(k, "shard index K", minimum=0)
        n = check_int(n, "shard count N", minimum=1)
    if n < 1:
        raise ValueError(f"shard count N must be >= 1, got {spec!r}")
    if not 0 <= k < n:
        raise ValueError(
            f"shard index K must be in [0, {n - 1}] for N = {n} shards (counted from 0), got {spec!r}"
        )
    return k, n


def shard_range(n: int, shard: tuple[int, int] | None, *, what: str = "samples") -> tuple[int, int]:
    """The global indices of ``shard`` in a run of ``n`` samples.

    Parameters
    ----------
    n : int
        The items of the whole run, >= 1 and at least the number of shards.
    shard : (K, N) or None
        The shard (:func:`parse_shard`); None is the whole run.
    what : str
        What the items are, for the error messages (``"samples"``, ``"images"``).

    Returns
    -------
    (int, int)
        ``[start, stop)`` = ``[K * n // N, (K + 1) * n // N)``.
    """
    n = check_int(n, f"the number of {what} n", minimum=1)
    if shard is None:
        return 0, n
    k, count = parse_shard(shard)  # type: ignore[misc]
    if n < count:
        raise ValueError(f"cannot split n = {n} {what} over {count} shards (need n >= shards)")
    return k * n // count, (k + 1) * n // count


def to_uint8(x: np.ndarray, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map samples in ``data_range`` to 8-bit levels 0..255 (rounded, clipped).

    Parameters
    ----------
    x : numpy.ndarray
        Samples [N, ...] (any real dtype), in the model's data range.
    data_range : (lo, hi)
        The values that become 0 and 255.

    Returns
    -------
    numpy.ndarray
        uint8, of ``x``'s shape.

    Raises
    ------
    ValueError
        For a NaN or an infinity (a diverged model must not become black or white pixels
        without a word); the message counts the samples that hold one.
    """
    lo, hi = data_range
    values = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        n_samples = int(np.count_nonzero(bad.reshape(bad.shape[0], -1).any(axis=1)))
        raise ValueError(
            f"{n_samples} of {values.shape[0]} samples hold NaN or infinite values "
            f"({int(np.count_nonzero(bad))} values): the model diverged"
        )
    y = np.rint((values - lo) * (255.0 / (hi - lo)))
    return np.clip(y, 0, 255).astype(np.uint8)


def sample_array(
    denoiser: Denoiser,
    n: int,
    *,
    sampler: str | SamplerSpec | SamplerChoice | None = None,
    steps: int | None = None,
    spacing: str | Spacing | None = None,
    seed: int = 0,
    shard: tuple[int, int] | str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    callback: Callback | None = None,
    **options: Any,
) -> np.ndarray:
    """Samples as a float32 NumPy array ``[n_shard, C, H, W]`` in the model's data range
    (:func:`sample_images` quantises them to uint8).

    Parameters
    ----------
    denoiser : Denoiser
        Usually an :class:`~refdiff.runtime.OnnxDenoiser`; its ``xp`` picks NumPy or CuPy.
    n : int
        Samples of the whole run (all shards together), >= 1.
    sampler : str or SamplerChoice, optional
        A name in :data:`refdiff.SAMPLERS` (default :data:`refdiff.DEFAULT_SAMPLER`), or a choice
        made by :meth:`refdiff.Diffusion.choose_sampler` (then no steps, spacing or options).
    steps : int, optional
        Sampling steps, 1 … T; default: the sampler's ``default_steps`` (DDPM: all T). Fewer steps
        than T respace the schedule (:func:`~refdiff.select_timesteps`).
    spacing : {"even", "logsnr", "karras"}, optional
        Which training timesteps ``steps`` picks; default: the sampler's (its registry entry).
    seed : int
        The noise seed; sample ``i`` depends only on (seed, i), never on batch size or shard.
    shard : (K, N) or "K/N", optional
        Draw only the contiguous block K (from 0) of N of the indices ``0 … n-1``.
    batch_size : int
        Samples per denoiser call; bounds memory only.
    progress : bool
        Show a tqdm progress bar (on stderr) counting sampler steps.
    callback : callable, optional
        ``callback(i, t, x, pred_x0)`` after every step of every chunk.
    **options
        The sampler's options (``eta`` for ``ddim`` and ``dpmpp_2m_sde``, ...: its registry
        entry's ``options``); another sampler's option is an error.

    Returns
    -------
    numpy.ndarray
        ``float32 [n_shard, C, H, W]`` in the model's data range; its global indices are
        ``range(*shard_range(n, shard))``.
    """
    d: Diffusion = denoiser.diffusion
    choice = d.choose_sampler(sampler, steps, spacing, **options)
    n = check_int(n, "the number of samples n", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    start, stop = shard_range(n, parse_shard(shard))
    xp: Any = getattr(denoiser, "xp", None)
    if xp is None:
        import array_api_compat.numpy as xp
    chunks = [(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)]
    out = np.empty((stop - start, *d.image_shape), dtype=np.float32)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(chunks) * choice.steps,
        disable=not progress,
        unit="step",
        desc=f"{choice.name}, {choice.steps} steps, {stop - start} samples",
        dynamic_ncols=True,
    )
    scope = getattr(denoiser, "device_scope", contextlib.nullcontext)
    with bar, scope():

        def step_done(i: int, t: int, x: Any, pred_x0: Any) -> None:
            bar.update(1)
            if callback is not None:
                callback(i, t, x, pred_x0)

        for lo, hi in chunks:
            indices = xp.asarray(np.arange(lo, hi, dtype=np.int64))
            x = d.sample(
                denoiser,
                hi - lo,
                sampler=choice,
                seed=seed,
                sample_indices=indices,
                xp=xp,
                dtype=xp.float32,
                callback=step_done,
            )
            out[lo - start : hi - start] = to_host(x)
    return out


@parameters_from(sample_array)
def sample_images(
    denoiser: Denoiser,
    n: int,
    *,
    sampler: str | SamplerSpec | SamplerChoice | None = None,
    steps: int | None = None,
    spacing: str | Spacing | None = None,
    seed: int = 0,
    shard: tuple[int, int] | str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    callback: Callback | None = None,
    **options: Any,
) -> np.ndarray:
    """Draw samples ``shard`` of a run of ``n`` and return them as uint8 ``[n_shard, C, H, W]``:
    :func:`sample_array`'s samples quantised by :func:`to_uint8`; the parameters are its.

    Returns
    -------
    numpy.ndarray
        ``uint8 [n_shard, C, H, W]``; its global indices are ``range(*shard_range(n, shard))``.
    """
    floats = sample_array(
        denoiser,
        n,
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        seed=seed,
        shard=shard,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
        **options,
    )
    return to_uint8(floats, denoiser.diffusion.data_range)


def check_output_path(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Check, before any sampling, that the PNG and its .npz companion can be written.

    Creates nothing: missing folders are created when the files are written
    (:func:`save_samples`), so a command that fails before it produces anything leaves nothing
    behind.

    Parameters
    ----------
    path : str or PathLike
        The PNG grid; the .npz goes beside it, with the suffix replaced.

    Returns
    -------
    (Path, Path)
        The PNG and the .npz paths.
    """
    png = check_output_file(path, suffix=".png", what="output grid")
    npz = check_output_file(png.with_suffix(".npz"), suffix=".npz", what="output")
    return png, npz


def save_samples(
    images: np.ndarray,
    path: str | os.PathLike[str],
    *,
    indices: np.ndarray,
    seed: int,
    info: dict[str, Any] | None = None,
    nrow: int | None = None,
    grid_limit: int | None = None,
) -> tuple[Path, Path]:
    """Write ``images`` (uint8 [N, C, H, W]) as an .npz and a PNG grid at ``path`` (beside it);
    the grid shows the first ``grid_limit`` images (default all), the .npz holds them all.

    The .npz holds ``images``, their global ``indices``, the ``seed`` (uint64) and the scalar
    entries of ``info`` (sampler, steps, eta, n, ...), so shards can be merged and re-checked.
    Each file is written whole or not at all (a temporary name in the same folder, flushed,
    renamed); the .npz, which holds everything, is written first.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 [N, C, H, W].
    path : str or PathLike
        The PNG grid (:func:`check_output_path`).
    indices : integer array [N]
        The images' global indices in the run.
    seed : int
        The noise seed they were drawn with.
    info : dict, optional
        Further entries of the .npz; None values are left out.
    nrow : int, optional
        Images per row of the grid (default: about a square).
    grid_limit : int, optional
        Show at most this many images in the grid (at least 1).

    Returns
    -------
    (Path, Path)
        The PNG and the .npz written.
    """
    from ..images import save_grid

    png, npz = check_output_path(path)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.shape != (images.shape[0],):
        raise ValueError(
            f"need one index per image: {images.shape[0]} images, indices {indices.shape}"
        )
    extra = {k: np.asarray(v) for k, v in (info or {}).items() if v is not None}
    h, w = images.shape[2:]
    shown = images if grid_limit is None else images[: max(1, int(grid_limit))]
    with created_folder(png.parent):  # a failed first write leaves no empty folder
        write_npz(npz, images=images, indices=indices, seed=np.uint64(seed), **extra)
    save_grid(shown, png, nrow=nrow, scale=max(1, 32 // max(h, w)))
    return png, npz
