"""Denoisers written directly as ONNX graphs, no training and no PyTorch: the exact denoiser of
Gaussian data, for conformance tests and for the reference vectors of ports in other languages.

For data x_0 ~ N(m, s² I), with v_t = ᾱ_t s² + 1 - ᾱ_t (refdiff.oracle),

    E[ε | x_t]   = √(1-ᾱ_t) (x_t - √ᾱ_t m) / v_t,
    E[x_0 | x_t] = m + √ᾱ_t s² (x_t - √ᾱ_t m) / v_t,
    v = √ᾱ_t ε - √(1-ᾱ_t) x_0,

and :func:`gaussian_denoiser` writes the one the settings' prediction asks for as graph
operations on per-index float32 tables (gathered by ``t``), with refdiff's denoiser contract
(inputs ``x``, ``t``, output ``model_output``, the settings in the metadata). With a learned
variance it appends a constant variance output (``variance_output``), so learned-variance paths
run too. A port can implement the same three lines and check a whole sampler against refdiff.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_number
from .._version import __version__
from ..onnx_contract import INPUT_NAMES, METADATA_KEY, OUTPUT_NAME, ModelMetadata
from ..settings import Diffusion
from .builder import OPSET, GraphBuilder

__all__ = ["gaussian_denoiser"]


def gaussian_denoiser(
    diffusion: Diffusion,
    mean: float = 0.0,
    std: float = 0.5,
    *,
    variance_output: float = 0.0,
    opset: int = OPSET,
) -> Any:
    """The exact denoiser of data N(``mean``, ``std``² I) for ``diffusion``'s schedule and
    prediction, as a refdiff denoiser file (an ``onnx.ModelProto``).

    Parameters
    ----------
    diffusion : Diffusion
        The settings (schedule, prediction, variance, image shape) written into the file.
    mean, std : float
        The data's mean and standard deviation (std > 0).
    variance_output : float
        With a learned variance, the constant value of the variance channels (log σ² for
        ``learned``, the interpolation v in [-1, 1] for ``learned_range``).
    opset : int
    """
    if not isinstance(diffusion, Diffusion):
        raise TypeError(f"diffusion must be a Diffusion, got {type(diffusion).__name__}")
    mean = check_number(mean, "mean")
    std = check_number(std, "std")
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    variance_output = check_number(variance_output, "variance_output")
    sched = diffusion.schedule
    acp = sched.alphas_cumprod
    a, b = np.sqrt(acp), np.sqrt(1.0 - acp)
    v = acp * std**2 + 1.0 - acp
    C, H, W = diffusion.image_shape
    g = GraphBuilder("gaussian_denoiser", opset=opset)
    x = g.input(INPUT_NAMES[0], np.float32, ("batch", C, H, W))
    t = g.input(INPUT_NAMES[1], np.int64, ("batch",))

    def per_t(values: np.ndarray, name: str) -> str:
        col = g.op("Gather", g.const(np.asarray(values, np.float32), name=name), t, axis=0)
        return g.op("Reshape", col, g.const([-1, 1, 1, 1]))

    centred = g.op("Sub", x, g.op("Mul", per_t(a, "sqrt_acp"), g.const(np.float32(mean))))
    eps = g.op("Mul", centred, per_t(b / v, "eps_coef"))
    x0 = g.op(
        "Add", g.op("Mul", centred, per_t(a * std**2 / v, "x0_coef")), g.const(np.float32(mean))
    )
    out = {"epsilon": eps, "x0": x0}.get(diffusion.prediction.value)
    if out is None:  # v
        out = g.op("Sub", g.op("Mul", per_t(a, "a"), eps), g.op("Mul", per_t(b, "b"), x0))
    if diffusion.variance.learned:
        const = g.op("Mul", x, g.const(np.float32(0.0)))
        extra = g.op("Add", const, g.const(np.float32(variance_output)))
        out = g.op("Concat", out, extra, axis=1)
    g.output(out, OUTPUT_NAME, dtype=np.float32, shape=("batch", diffusion.out_channels, H, W))
    meta = ModelMetadata(
        diffusion=diffusion,
        model={"kind": "gaussian_oracle", "mean": mean, "std": std},
        dtype="float32",
        refdiff_version=__version__,
    )
    return g.to_model(
        metadata={METADATA_KEY: meta.to_json()}, doc_string="exact denoiser of N(m, s² I)"
    )
