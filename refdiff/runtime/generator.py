"""Running a generator file (a whole sampler in one ONNX graph) and its step file, without
PyTorch and without refdiff's sampler code: onnxruntime does everything.

:class:`OnnxGenerator` opens a file written by ``refdiff export MODEL --sampler ...``
(:func:`refdiff.graph.build_generator`), checks its metadata, and draws samples for a seed and
global sample indices; :meth:`OnnxGenerator.sample_images` splits a run into batches and shards
exactly as :func:`refdiff.runtime.sample_images` does, so the images equal those of the Python
sampler with the same choice. :class:`OnnxStepper` runs the step file one step at a time.

Bad input is refused on the host before the graph sees it (the graph cannot raise): a negative or
oversized seed, empty, negative or non-integer indices, a batch larger than the memory this
process may use, a step out of range.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_int
from ..noise import check_seed
from ..onnx_contract import (
    GENERATOR_OUTPUTS,
    METADATA_KEY,
    STEP_OUTPUTS,
    GeneratorMetadata,
    check_onnx_file,
)
from .devices import default_session_options, import_onnxruntime, weights_dtype
from .sampling import parse_shard, shard_range

__all__ = [
    "Conformance",
    "OnnxGenerator",
    "OnnxStepper",
    "available_memory",
    "check_indices",
    "compare_with_python",
]

#: Seeds a generator takes: int64 in the graph, so [0, 2**63).
MAX_SEED = 2**63 - 1


def check_indices(sample_indices: Any) -> np.ndarray:
    """Global sample indices as int64 [B]: a non-empty 1-D array of integers >= 0."""
    idx = np.asarray(sample_indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"sample_indices must be a non-empty 1-D array, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"sample_indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0:
        raise ValueError(f"sample_indices must be >= 0, got {int(idx.min())}")
    return idx.astype(np.int64)


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _bytes_per_sample(model_path: Path, meta: GeneratorMetadata) -> int:
    """An upper bound on the memory one sample needs while the file runs: every float tensor
    the denoiser makes for one sample (onnx shape inference at batch 1), plus the loop's state."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an unreadable graph: let onnxruntime say why when it opens
        inferred = None
    per = 0
    sizes = {1: 4, 10: 2, 11: 8, 7: 8}  # float, float16, double, int64
    graphs = [] if inferred is None else [inferred.graph]
    while graphs:  # the main graph and every Loop/If body
        graph = graphs.pop()
        for vi in graph.value_info:
            t = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            per += int(np.prod(dims or [1])) * sizes.get(t.elem_type, 4)
        graphs.extend(a.g for node in graph.node for a in node.attribute if a.type == a.GRAPH)
    c, h, w = meta.diffusion.image_shape
    state = 4 * c * h * w * (4 + len(meta.plan["d_coef"][0]))
    return max(per, 1) + state


class _Session:
    """What the generator and the step file share: the file, its metadata, the session."""

    kind = "generator"
    outputs: tuple[str, ...] = GENERATOR_OUTPUTS

    def __init__(self, path: str | os.PathLike[str], *, session_options: Any = None) -> None:
        self.path = Path(path)
        check_onnx_file(self.path)
        ort = import_onnxruntime()
        if session_options is None:
            session_options = default_session_options(ort, weights_dtype(self.path))
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own exception types
            raise ValueError(
                f"{str(self.path)!r} is not a readable ONNX model (truncated or not ONNX?): {exc}"
            ) from None
        source = f"ONNX file {str(self.path)!r}"
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = GeneratorMetadata.from_json(text, source=source)
        if self.metadata.kind != self.kind:
            raise ValueError(
                f"{source} is a refdiff {self.metadata.kind} file, not a {self.kind} file"
            )
        names = [o.name for o in self.session.get_outputs()]
        if names != list(self.outputs):
            raise ValueError(
                f"{source}: outputs {names}, a {self.kind} file has {list(self.outputs)}"
            )
        self.diffusion = self.metadata.diffusion
        self.image_shape = tuple(self.diffusion.image_shape)
        self._per_sample = _bytes_per_sample(self.path, self.metadata)

    def _check_batch(self, batch: int) -> None:
        free = available_memory()
        need = batch * self._per_sample
        if free is not None and need > free:
            most = max(1, free // self._per_sample)
            raise MemoryError(
                f"a batch of {batch} needs about {need / 2**30:.1f} GiB while this process may "
                f"use {free / 2**30:.1f} GiB; use at most {most} samples per batch"
            )

    def _feed(self, seed: int, sample_indices: Any) -> dict[str, np.ndarray]:
        seed = check_seed(seed)
        if seed > MAX_SEED:
            raise ValueError(
                f"seed must be in [0, 2**63) for a generator file (int64 in the graph), got {seed}"
            )
        idx = check_indices(sample_indices)
        self._check_batch(len(idx))
        return {"seed": np.asarray(seed, np.int64), "sample_indices": idx}

    def describe(self) -> str:
        return f"{self.path}: {self.metadata.describe()}"


class OnnxGenerator(_Session):
    """A generator file: ``run(seed, sample_indices)`` gives the samples of those indices.

    Attributes
    ----------
    metadata : GeneratorMetadata
    diffusion : Diffusion
    """

    def run(
        self,
        seed: int,
        sample_indices: Any,
        *,
        x_T: np.ndarray | None = None,
        noise: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(samples float32 [B, C, H, W], images uint8 [B, C, H, W])`` of ``sample_indices``
        under ``seed``; ``x_T`` [B, C, H, W] and ``noise`` [N, B, C, H, W] override the noise the
        graph draws itself."""
        feed = self._feed(seed, sample_indices)
        B = len(feed["sample_indices"])
        if x_T is not None:
            feed["x_T"] = self._array(x_T, (B, *self.image_shape), "x_T")
        if noise is not None:
            if not self.metadata.stochastic:
                raise ValueError(
                    f"the {self.metadata.sampler['sampler']} sampler of this file draws no noise "
                    "after x_T; it takes no noise input"
                )
            feed["noise"] = self._array(noise, (self.metadata.steps, B, *self.image_shape), "noise")
        samples, images = self.session.run(list(self.outputs), feed)
        bad = ~np.isfinite(samples)
        if bad.any():
            raise FloatingPointError(
                f"the generator's samples hold {int(bad.sum())} NaN or infinite values: the "
                "model diverged"
            )
        return samples, images

    @staticmethod
    def _array(a: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        arr = np.ascontiguousarray(a, dtype=np.float32)
        if arr.shape != shape:
            raise ValueError(f"{what} must have shape {list(shape)}, got {list(arr.shape)}")
        return arr

    def sample_images(
        self,
        n: int,
        *,
        seed: int = 0,
        shard: tuple[int, int] | str | None = None,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """uint8 images [n_shard, C, H, W] of shard ``shard`` of a run of ``n`` samples: the
        same images :func:`refdiff.runtime.sample_images` draws with this file's sampler.
        ``progress(done)`` is called after each batch with the samples done so far."""
        start, stop = shard_range(n, parse_shard(shard))
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        self._check_batch(min(batch_size, stop - start))
        out = np.empty((stop - start, *self.image_shape), dtype=np.uint8)
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            _, images = self.run(seed, np.arange(lo, hi, dtype=np.int64))
            out[lo - start : hi - start] = images
            if progress is not None:
                progress(hi - start)
        return out


class OnnxStepper(_Session):
    """A step file, one step per call: ``start(seed, indices)``, then ``step(k, ...)`` for
    k = 0 … N-1 (or :meth:`run`, which does both)."""

    kind = "step"
    outputs = STEP_OUTPUTS

    @property
    def history(self) -> int:
        return len(self.metadata.plan["d_coef"][0])

    def start(self, seed: int, sample_indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(x_T, zero history)`` of ``sample_indices`` under ``seed``."""
        feed = self._feed(seed, sample_indices)
        B = len(feed["sample_indices"])
        x = np.zeros((B, *self.image_shape), np.float32)
        hist = np.zeros((self.history, B, *self.image_shape), np.float32)
        x_T, hist, _ = self.session.run(
            list(self.outputs), {**feed, "step": np.asarray(-1, np.int64), "x": x, "history": hist}
        )
        return x_T, hist

    def step(
        self, k: int, seed: int, sample_indices: Any, x: np.ndarray, history: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step ``k`` (0 … N-1): ``(x_next, history_next, pred_x0)``."""
        k = check_int(k, "step", minimum=0, maximum=self.metadata.steps - 1)
        feed = self._feed(seed, sample_indices)
        feed.update(
            step=np.asarray(k, np.int64),
            x=np.ascontiguousarray(x, np.float32),
            history=np.ascontiguousarray(history, np.float32),
        )
        return tuple(self.session.run(list(self.outputs), feed))

    def run(self, seed: int, sample_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Every step in turn: the samples, equal to the generator's."""
        x, hist = self.start(seed, sample_indices)
        for k in range(self.metadata.steps):
            x, hist, _ = self.step(k, seed, sample_indices, x, hist)
        return x


@dataclass(frozen=True)
class Conformance:
    """A generator file against refdiff's Python sampler on the same denoiser and seeds.

    Attributes
    ----------
    max_abs : float
        The largest difference of the float32 samples.
    max_rel : float
        ... relative to ``1 + |sample|``.
    pixels_differing : int
        How many 8-bit pixel values differ (values near a rounding boundary may).
    pixels : int
    tolerance : float
        The bound ``max_rel`` must stay within (float32 rounding of T steps).
    """

    max_abs: float
    max_rel: float
    pixels_differing: int
    pixels: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance

    def report(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return (
            f"generator vs Python sampler: max abs {self.max_abs:.2e}, max rel "
            f"{self.max_rel:.2e} (tolerance {self.tolerance:.0e}); 8-bit pixels differing: "
            f"{self.pixels_differing} of {self.pixels}  {verdict}"
        )


def compare_with_python(
    generator: OnnxGenerator,
    denoiser: Any,
    *,
    seeds: Sequence[int] = (0, 1),
    indices: Sequence[int] = (0, 1, 2, 5),
    tolerance: float = 1e-4,
) -> Conformance:
    """Run ``generator`` and refdiff's Python sampler (:func:`refdiff.runtime.sample_array`,
    same sampler, steps, spacing and options, from the file's metadata) on ``denoiser`` for
    each seed and the global ``indices``, and compare."""
    from .sampling import sample_array, to_uint8

    meta = generator.metadata
    s = meta.sampler
    diffusion = denoiser.diffusion
    if diffusion != meta.diffusion:
        raise ValueError(
            "the denoiser's diffusion settings differ from the generator's: not the model it was "
            "built from"
        )
    choice = diffusion.choose_sampler(s["sampler"], s["steps"], s["spacing"], **s["options"])
    idx = check_indices(indices)
    n = int(idx.max()) + 1
    worst_abs = worst_rel = 0.0
    differing = pixels = 0
    for seed in seeds:
        samples, images = generator.run(seed, idx)
        want = sample_array(denoiser, n, sampler=choice, seed=seed, progress=False)[idx]
        diff = np.abs(samples.astype(np.float64) - want)
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float((diff / (1.0 + np.abs(want))).max()))
        differing += int(np.count_nonzero(images != to_uint8(want, diffusion.data_range)))
        pixels += images.size
    return Conformance(worst_abs, worst_rel, differing, pixels, tolerance)
