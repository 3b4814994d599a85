"""A whole sampler in one ONNX graph: seed and sample indices in, images out.

:func:`build_generator` takes an exported refdiff denoiser (an ``onnx.ModelProto`` written by
``refdiff export``) and a sampler's :class:`~refdiff.plans.Plan`, and writes the reverse loop
around the denoiser as graph operations:

- the plan's tables (float32, cast from its float64 values once) as initializers, gathered by
  the step number;
- x_T and each step's noise made inside the graph by refdiff's counter-based Philox generator
  (:mod:`refdiff.graph.noise`), so sample i of seed s is the image ``refdiff sample --seed s``
  draws as sample i in Python, whatever the batch;
- each step as the plan's update, with the float32 operations of :func:`refdiff.run_plan` in the
  same order: x̂₀ = pred_x·x + pred_out·out (clipped), x' = x_coef·x + Σ_j d_j·x̂₀_{k-j} +
  noise_coef·z (DDPM's learned variances: the noise scale from the output's variance channels);
- the 8-bit images as :func:`refdiff.runtime.to_uint8` makes them (in float64, round half to
  even, clipped to 0 … 255).

The loop is an ONNX ``Loop`` whose body holds the denoiser's weights (``layout="loop"``, one copy
of the network) or ``layout="unrolled"`` (N calls of one copy of the weights in the main graph);
docs/generator.md compares them. :func:`build_step` writes the step file: one step of the same
plan per call, for hosts that show progress or stop early.

The file contract (names, metadata) is :mod:`refdiff.onnx_contract`; this module imports onnx,
never torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._version import __version__
from ..noise import PRIOR_STEP
from ..onnx_contract import (
    METADATA_KEY,
    GeneratorMetadata,
    ModelMetadata,
)
from ..plans import Plan
from ..sampler_registry import SamplerChoice
from ..settings import Diffusion
from .builder import EmbeddedModel, GraphBuilder, onnx
from .noise import standard_normal

__all__ = [
    "LAYOUTS",
    "build_generator",
    "build_step",
    "check_generator_precision",
    "denoiser_metadata",
    "save_model",
]

#: How a generator lays out its loop.
LAYOUTS = ("loop", "unrolled")

F32, I64 = np.float32, np.int64


def denoiser_metadata(model: Any, source: str = "the denoiser") -> ModelMetadata:
    """The refdiff metadata of an exported denoiser (an ``onnx.ModelProto``)."""
    meta = {p.key: p.value for p in model.metadata_props}
    return ModelMetadata.from_json(meta.get(METADATA_KEY), source=source)


class _Tables:
    """The plan's per-step values as graph values: gathered by a step number in a Loop body or a
    step file, or constants when the loop is unrolled."""

    def __init__(self, g: GraphBuilder, plan: Plan) -> None:
        self.plan, self.g = plan, g

    def table(self, name: str) -> str:
        """The whole table ``name`` as an initializer (made when first used): float32 for the
        coefficients (the float64 plan cast once), int64 for the indices."""
        dtype = I64 if name in ("model_t", "step_index") else F32
        return self.g.const(np.asarray(getattr(self.plan, name), dtype=dtype), name=name)

    def at(self, g: GraphBuilder, k: int | str) -> Callable[[str], str]:
        """``value(name)`` of step ``k`` (an int: a constant; a value name: gathered)."""
        plan = self.plan

        def value(name: str) -> str:
            if isinstance(k, int):
                if name.startswith("d"):
                    return g.const(F32(plan.d_coef[k, int(name[1:])]))
                if name in ("model_t", "step_index"):
                    return g.const(I64(getattr(plan, name)[k]))
                return g.const(F32(getattr(plan, name)[k]))
            if name.startswith("d"):
                row = g.op("Gather", self.table("d_coef"), k, axis=0)
                return g.op("Gather", row, g.const(int(name[1:])), axis=0)
            return g.op("Gather", self.table(name), k, axis=0)

        return value


def _step(
    g: GraphBuilder,
    den: EmbeddedModel,
    plan: Plan,
    value: Callable[[str], str],
    x: str,
    history: list[str],
    seed: str,
    indices: str,
    shape: tuple[int, int, int],
    noise: Callable[[GraphBuilder, str], str] | None = None,
) -> tuple[str, str]:
    """One step of ``plan``: ``(x_next, x̂₀)`` from ``x`` and the earlier x̂₀ (newest first)."""
    C = shape[0]
    t = g.op("Expand", value("model_t"), g.op("Shape", indices))
    out = g.call(den, x=x, t=t)
    mean = out
    if plan.variance.learned:
        mean = g.op("Slice", out, g.const([0]), g.const([C]), g.const([1]))
    x0 = g.op("Add", g.op("Mul", x, value("pred_x")), g.op("Mul", mean, value("pred_out")))
    if plan.clip is not None:
        lo, hi = plan.clip
        x0 = g.op("Clip", x0, g.const(F32(lo)), g.const(F32(hi)))
    acc = g.op("Mul", x, value("x_coef"))
    for j, d in enumerate([x0, *history]):
        acc = g.op("Add", acc, g.op("Mul", d, value(f"d{j}")))
    if plan.stochastic:
        step = value("step_index")
        z = noise(g, step) if noise is not None else standard_normal(g, seed, indices, step, shape)
        if plan.learned_noise:
            var = g.op("Slice", out, g.const([C]), g.const([2 * C]), g.const([1]))
            log_var = var
            if plan.variance.value == "learned_range":
                frac = g.op("Div", g.op("Add", var, g.const(F32(1.0))), g.const(F32(2.0)))
                hi = g.op("Mul", frac, value("log_var_max"))
                lo = g.op("Mul", g.op("Sub", g.const(F32(1.0)), frac), value("log_var_min"))
                log_var = g.op("Add", hi, lo)
            scale = g.op("Exp", g.op("Mul", log_var, g.const(F32(0.5))))
            term = g.op("Mul", g.op("Mul", scale, z), value("noise_coef"))
        else:
            term = g.op("Mul", value("noise_coef"), z)
        acc = g.op("Add", acc, term)
    return acc, x0


def _to_uint8(g: GraphBuilder, x: str, data_range: tuple[float, float]) -> str:
    """refdiff.runtime.to_uint8 as nodes: rint((x - lo) · 255/(hi - lo)) in float64, clipped."""
    lo, hi = data_range
    y = g.op("Sub", g.op("Cast", x, to=onnx.TensorProto.DOUBLE), g.const(float(lo)))
    y = g.op("Round", g.op("Mul", y, g.const(255.0 / (hi - lo))))
    y = g.op("Clip", y, g.const(0.0), g.const(255.0))
    return g.op("Cast", y, to=onnx.TensorProto.UINT8)


def _metadata(
    kind: str,
    diffusion: Diffusion,
    choice: SamplerChoice,
    plan: Plan,
    den_meta: ModelMetadata,
    graph: str,
) -> dict[str, str]:
    denoiser = {k: v for k, v in den_meta.to_dict().items() if k != "diffusion"}
    meta = GeneratorMetadata(
        kind=kind,
        diffusion=diffusion,
        sampler=choice.to_dict(),
        plan=plan.to_dict(),
        denoiser=denoiser,
        graph=graph,
        refdiff_version=__version__,
    )
    return {METADATA_KEY: meta.to_json()}


def check_generator_precision(meta: ModelMetadata) -> None:
    """A ``ValueError`` unless onnxruntime computes the denoiser of ``meta`` as its precision says.

    A bfloat16 file is the float32 graph that OpenVINO runs in bfloat16: inside a generator,
    onnxruntime would run it in float32 and the file would not be what its metadata says.
    """
    p = meta.precision
    if p is not None and p.engine != "onnxruntime":
        raise ValueError(
            f"a {p.name} denoiser runs on {p.engine}, and a generator runs on onnxruntime: build "
            "the generator from the float32 file (or an int8 variant)"
        )


def _prepare(denoiser: Any, choice: SamplerChoice) -> tuple[ModelMetadata, Diffusion, Plan]:
    if not isinstance(denoiser, onnx.ModelProto):
        raise TypeError(f"denoiser must be an onnx.ModelProto, got {type(denoiser).__name__}")
    if not isinstance(choice, SamplerChoice):
        raise TypeError(f"choice must be a SamplerChoice, got {type(choice).__name__}")
    den_meta = denoiser_metadata(denoiser)
    check_generator_precision(den_meta)
    diffusion = den_meta.diffusion
    return den_meta, diffusion, diffusion.plan(choice)


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def build_generator(denoiser: Any, choice: SamplerChoice, *, layout: str = "loop") -> Any:
    """The generator file (an ``onnx.ModelProto``) of ``denoiser`` sampled with ``choice``.

    Parameters
    ----------
    denoiser : onnx.ModelProto
        An exported refdiff denoiser (its metadata gives the diffusion settings).
    choice : SamplerChoice
        The sampler, steps, spacing and options (``diffusion.choose_sampler(...)``); its sampler
        must have a plan (every one but Heun).
    layout : {"loop", "unrolled"}
        An ONNX Loop over the steps, or the steps written out.

    Returns
    -------
    onnx.ModelProto
        Inputs ``seed`` int64 [], ``sample_indices`` int64 [B], and the optional ``x_T`` float32
        [B, C, H, W] and (stochastic samplers) ``noise`` float32 [N, B, C, H, W] (empty by
        default: made in the graph); outputs ``samples`` float32 and ``images`` uint8
        [B, C, H, W]; checked by onnx.checker.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    den_meta, diffusion, plan = _prepare(denoiser, choice)
    shape = diffusion.image_shape
    C, H, W = shape
    N = plan.steps
    g = GraphBuilder("refdiff_generator", opset=_opset(denoiser))
    seed = g.input("seed", I64, ())
    idx = g.input("sample_indices", I64, ("batch",))
    x_T_in = g.input("x_T", F32, ("batch_x_T", C, H, W), default=np.zeros((0, C, H, W), F32))
    noise_in = None
    if plan.stochastic:
        noise_in = g.input(
            "noise", F32, ("steps", "batch_noise", C, H, W), default=np.zeros((0, 0, C, H, W), F32)
        )
    tables = _Tables(g, plan)  # used by the Loop body (unrolled steps take constants)

    def given(g_: GraphBuilder, value: str) -> str:
        return g_.op("Greater", g_.op("Size", value), g_.const(0))

    # x_T: the one given, else the prior noise of (seed, index)
    then_b, else_b = g.subgraph("x_T_given"), g.subgraph("x_T_drawn")
    then_b.output(then_b.op("Identity", x_T_in), dtype=F32, shape=None)
    prior = standard_normal(else_b, seed, idx, else_b.const(PRIOR_STEP), shape)
    else_b.output(prior, dtype=F32, shape=None)
    x_T = g.op("If", given(g, x_T_in), then_branch=then_b, else_branch=else_b, name="x_T")

    def step_noise(gb: GraphBuilder, step_k: str, k: int | str) -> str:
        """Step k's noise: the ``noise`` input's slice when given, else drawn in the graph."""
        assert noise_in is not None  # only stochastic plans have the input and draw noise
        then_n, else_n = gb.subgraph("noise_given"), gb.subgraph("noise_drawn")
        kk = then_n.const(k) if isinstance(k, int) else k
        then_n.output(then_n.op("Gather", noise_in, kk, axis=0), dtype=F32, shape=None)
        else_n.output(standard_normal(else_n, seed, idx, step_k, shape), dtype=F32, shape=None)
        return gb.op("If", given(gb, noise_in), then_branch=then_n, else_branch=else_n, name="z")

    zeros = g.op(
        "ConstantOfShape", g.op("Shape", x_T), value=onnx.numpy_helper.from_array(np.zeros(1, F32))
    )
    hist0 = [zeros] * (plan.history - 1)
    if layout == "loop":
        body = g.subgraph("step")
        i = body.input("i", I64, ())
        cond = body.input("cond", np.bool_, ())
        x = body.input("x", F32, None)
        hist = [body.input(f"h{j + 1}", F32, None) for j in range(plan.history - 1)]
        den = body.add_model(denoiser, prefix="denoiser")
        x_new, x0 = _step(
            body,
            den,
            plan,
            tables.at(body, i),
            x,
            hist,
            seed,
            idx,
            shape,
            (lambda gb, s: step_noise(gb, s, i)) if noise_in is not None else None,
        )
        body.output(body.op("Identity", cond), dtype=np.bool_, shape=None)
        body.output(x_new, dtype=F32, shape=None)
        for h in [x0, *hist][: plan.history - 1]:
            body.output(body.op("Identity", h), dtype=F32, shape=None)
        outs = g.op("Loop", g.const(N), None, x_T, *hist0, body=body, outputs=plan.history)
        final = outs[0] if isinstance(outs, tuple) else outs
    else:
        den = g.add_model(denoiser, prefix="denoiser")
        x, hist = x_T, hist0
        for k in range(N):
            with g.scope(f"step{k}"):
                noise_fn = (
                    (lambda gb, s, k=k: step_noise(gb, s, k)) if noise_in is not None else None
                )
                x, x0 = _step(g, den, plan, tables.at(g, k), x, hist, seed, idx, shape, noise_fn)
                hist = [x0, *hist][: plan.history - 1]
        final = x
    g.output(final, "samples", dtype=F32, shape=("batch", C, H, W))
    g.output(
        _to_uint8(g, final, diffusion.data_range),
        "images",
        dtype=np.uint8,
        shape=("batch", C, H, W),
    )
    meta = _metadata("generator", diffusion, choice, plan, den_meta, layout)
    return g.to_model(metadata=meta, doc_string=f"refdiff generator: {choice.describe()}")


def build_step(denoiser: Any, choice: SamplerChoice) -> Any:
    """The step file of ``denoiser`` sampled with ``choice``: one step per call.

    Inputs ``seed`` int64 [], ``sample_indices`` int64 [B], ``step`` int64 [], ``x`` float32
    [B, C, H, W] and ``history`` float32 [H, B, C, H, W] (the last H x̂₀, newest first; zeros
    before the first step); outputs ``x_next``, ``history_next`` and ``pred_x0``. ``step = -1``
    returns x_T (the prior noise of (seed, index)) and zeros; ``step = k`` (0 … N-1) runs the
    plan's step k. Run -1, 0, …, N-1 in turn: the result equals the generator's ``samples``.
    """
    den_meta, diffusion, plan = _prepare(denoiser, choice)
    shape = diffusion.image_shape
    C, H, W = shape
    Hh = plan.history
    g = GraphBuilder("refdiff_step", opset=_opset(denoiser))
    seed = g.input("seed", I64, ())
    idx = g.input("sample_indices", I64, ("batch",))
    step = g.input("step", I64, ())
    x = g.input("x", F32, ("batch", C, H, W))
    history = g.input("history", F32, (Hh, "batch", C, H, W))
    tables = _Tables(g, plan)
    start, run = g.subgraph("start"), g.subgraph("run")
    x_T = standard_normal(start, seed, idx, start.const(PRIOR_STEP), shape)
    zero = start.op("Mul", x, start.const(F32(0.0)))  # the shape of x, for the zeros
    start.output(x_T, dtype=F32, shape=None)
    start.output(start.op("Mul", history, start.const(F32(0.0))), dtype=F32, shape=None)
    start.output(zero, dtype=F32, shape=None)
    den = run.add_model(denoiser, prefix="denoiser")
    past = [run.op("Gather", history, run.const(j), axis=0) for j in range(Hh - 1)]
    x_new, x0 = _step(run, den, plan, tables.at(run, step), x, past, seed, idx, shape)
    stacked = run.op(
        "Concat", *[run.op("Unsqueeze", v, run.const([0])) for v in [x0, *past]], axis=0
    )
    run.output(x_new, dtype=F32, shape=None)
    run.output(stacked, dtype=F32, shape=None)
    run.output(run.op("Identity", x0), dtype=F32, shape=None)
    first = g.op("Less", step, g.const(0))
    outs = g.op("If", first, then_branch=start, else_branch=run, outputs=3, name="step")
    for value, name, dims in zip(
        outs,
        ("x_next", "history_next", "pred_x0"),
        (("batch", C, H, W), (Hh, "batch", C, H, W), ("batch", C, H, W)),
        strict=True,
    ):
        g.output(value, name, dtype=F32, shape=dims)
    meta = _metadata("step", diffusion, choice, plan, den_meta, "step")
    return g.to_model(metadata=meta, doc_string=f"refdiff step file: {choice.describe()}")


def save_model(model: Any, path: Any) -> Any:
    """Write ``model`` to ``path`` whole or not at all (a temporary beside it, checked by
    onnx.checker, then renamed); returns the path."""
    from pathlib import Path

    from .._io import atomic_path

    out = Path(path)
    with atomic_path(out, suffix=".onnx") as tmp:
        onnx.save_model(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return out
