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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._array import to_host
from .._checks import check_int
from .._enums import Spacing
from .._io import check_output_file, make_dir, write_npz
from ..sampler_loop import Callback
from ..sampler_registry import SamplerChoice, SamplerSpec
from ..settings import Diffusion

__all__ = [
    "Denoiser",
    "check_output_path",
    "parse_shard",
    "sample_array",
    "sample_images",
    "save_samples",
    "shard_range",
    "to_uint8",
]


class Denoiser(Protocol):
    """What :func:`sample_images` needs: ``(x, t) -> model_output`` plus the model's settings.

    ``xp`` (the array namespace the denoiser takes) is optional and defaults to NumPy.
    """

    diffusion: Diffusion

    def __call__(self, x: Any, t: Any) -> Any: ...


def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (or ``(K, N)``) -> ``(K, N)`` with ``0 <= K < N``; ``None`` stays ``None``.

    Shards are numbered from 0, like process ranks: ``--shard $RANK/$WORLD_SIZE``.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        parts = spec.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"shard must look like K/N (shard K of N, K counted from 0, e.g. 0/4), got {spec!r}"
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


def shard_range(n: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """The global sample indices ``[start, stop)`` of ``shard`` in a run of ``n`` samples."""
    n = check_int(n, "the number of samples n", minimum=1)
    if shard is None:
        return 0, n
    k, count = parse_shard(shard)  # type: ignore[misc]
    if n < count:
        raise ValueError(f"cannot split n = {n} samples over {count} shards (need n >= shards)")
    return k * n // count, (k + 1) * n // count


def to_uint8(x: np.ndarray, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map samples in ``data_range`` to 8-bit levels 0..255 (rounded, clipped).

    A NaN or an infinity is a ``ValueError`` (a diverged model must not become black or white
    pixels without a word).
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
    """Samples as a float32 NumPy array ``[n_shard, C, H, W]`` in the model's data range.

    The arguments are those of :func:`sample_images`, which quantises this result to uint8.
    """
    d: Diffusion = denoiser.diffusion
    choice = d.choose_sampler(sampler, steps, spacing, **options)
    n = check_int(n, "the number of samples n", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    start, stop = shard_range(n, parse_shard(shard))
    xp = getattr(denoiser, "xp", None)
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
    """Draw samples ``shard`` of a run of ``n`` and return them as uint8 ``[n_shard, C, H, W]``.

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

    Returns ``(png_path, npz_path)``. Creates nothing: missing folders are created when the files
    are written (:func:`save_samples`), so a command that fails before it produces anything
    leaves nothing behind.
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
    """
    from ..images import save_grid

    png, npz = check_output_path(path)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.shape != (images.shape[0],):
        raise ValueError(
            f"need one index per image: {images.shape[0]} images, indices {indices.shape}"
        )
    extra = {k: np.asarray(v) for k, v in (info or {}).items() if v is not None}
    make_dir(png.parent)
    write_npz(npz, images=images, indices=indices, seed=np.uint64(seed), **extra)
    h, w = images.shape[2:]
    shown = images if grid_limit is None else images[: max(1, int(grid_limit))]
    save_grid(shown, png, nrow=nrow, scale=max(1, 32 // max(h, w)))
    return png, npz
