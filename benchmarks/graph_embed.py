"""A denoiser embedded in an ONNX Loop (refdiff.graph) against a Python loop of session calls:
time of a 10-step loop and the difference from the Python loop.

The loop is x <- x - 0.1 * model_output[:, :C] over 10 timesteps from T-1 down to 0: not a
sampler, only the shape of one (a denoiser call and an update per step). Three ways, interleaved:

- python: one onnxruntime session of the model file, called once per step from Python;
- loop, weights in body: one graph whose Loop body holds the denoiser and its weights
  (``body.add_model``), as docs/graph.md recommends;
- loop, weights outside: the same, with the weights in the main graph (``g.add_model``, called
  from the body), where onnxruntime optimizes the body's nodes less.

    python benchmarks/graph_embed.py                    # the tiny preset, random weights (torch)
    python benchmarks/graph_embed.py --model model.onnx --batch 4
    python benchmarks/graph_embed.py --model tiny-fp16.onnx --optimization extended

Timings on a shared machine are noisy: compare the ratios of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from refdiff.graph import GraphBuilder
from refdiff.onnx_contract import METADATA_KEY, ModelMetadata

STEPS = 10


def loop_model(model: onnx.ModelProto, shape: tuple, weights_in_body: bool):
    c = shape[0]
    g = GraphBuilder("loop")
    x = g.input("x", np.float32, ("batch", *shape))
    timesteps = g.input("timesteps", np.int64, ("steps",))
    outer = None if weights_in_body else g.add_model(model, prefix="denoiser")
    body = g.subgraph("body")
    i = body.input("i", np.int64, ())
    cond = body.input("cond", np.bool_, ())
    x_in = body.input("x_in", np.float32, ("batch", *shape))
    denoiser = outer or body.add_model(model, prefix="denoiser")
    batch = body.op("Slice", body.op("Shape", x_in), body.const([0]), body.const([1]))
    t = body.op("Expand", body.op("Gather", timesteps, i), batch)
    out = body.call(denoiser, x=x_in, t=t)
    mean_side = body.op("Slice", out, body.const([0]), body.const([c]), body.const([1]))
    body.output(cond, dtype=np.bool_)
    step = body.op("Mul", mean_side, body.const(0.1, np.float32))
    body.output(body.op("Sub", x_in, step), dtype=np.float32)
    x_out = g.op("Loop", g.op("Shape", timesteps), None, x, body=body)
    g.output(x_out, "x_out", dtype=np.float32, shape=("batch", *shape))
    return g.to_model()


def tiny_model(folder: Path) -> Path:
    from refdiff.export import export_onnx

    from refdiff import Diffusion
    from refdiff.nn import preset, randomized_unet

    net = randomized_unet(preset("tiny", dropout=0.0), 0)
    cfg = net.config
    path = folder / "tiny.onnx"
    export_onnx(net, Diffusion(image_shape=(cfg.in_channels, cfg.image_size, cfg.image_size)), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a refdiff .onnx file (default: tiny preset)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; the minimum is kept")
    parser.add_argument(
        "--optimization",
        choices=["basic", "extended", "all"],
        default="all",
        help="onnxruntime's graph optimization level, for every session (default: all)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or tiny_model(Path(tmp))
        model = onnx.load(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    level = {
        "basic": "ORT_ENABLE_BASIC",
        "extended": "ORT_ENABLE_EXTENDED",
        "all": "ORT_ENABLE_ALL",
    }
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level[args.optimization])
    cpu = ["CPUExecutionProvider"]
    file_session = ort.InferenceSession(model.SerializeToString(), opts, providers=cpu)
    x_shape = file_session.get_inputs()[0].shape
    shape = tuple(x_shape[1:])
    x0 = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(np.float32)
    meta = ModelMetadata.from_json(
        {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY), source=str(path)
    )
    t_last = meta.diffusion.num_timesteps - 1
    timesteps = np.linspace(t_last, 0, STEPS).round().astype(np.int64)

    def python_loop():
        x = x0
        for t in timesteps:
            (out,) = file_session.run(None, {"x": x, "t": np.full(args.batch, t)})
            x = x - np.float32(0.1) * out[:, : shape[0]]
        return x

    runs = {"python": python_loop}
    for label, in_body in (("loop, weights in body", True), ("loop, weights outside", False)):
        sess = ort.InferenceSession(
            loop_model(model, shape, in_body).SerializeToString(), opts, providers=cpu
        )
        runs[label] = lambda s=sess: s.run(None, {"x": x0, "timesteps": timesteps})[0]
    want = python_loop()
    diffs = {k: float(np.abs(fn() - want).max()) for k, fn in runs.items()}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    print(
        f"onnxruntime {ort.__version__} (optimization {args.optimization}), {args.threads} "
        f"thread(s), batch {args.batch}, x {shape}"
    )
    print(f"{'':>22}  {'ms / 10 steps':>13}  {'/ python':>8}  {'max |x - python|':>16}")
    for k in runs:
        ratio = best[k] / best["python"]
        print(f"{k:>22}  {1e3 * best[k]:13.2f}  {ratio:8.2f}  {diffs[k]:16.3g}")


if __name__ == "__main__":
    main()
