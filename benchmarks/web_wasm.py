"""The browser's WebAssembly time per sampler step against native onnxruntime on the same step
file, and the page's pixels against ``refdiff sample``, in one run (docs/web.md).

It builds the page of examples/web around GENERATOR (its step file beside it), then, in
interleaved rounds, drives it in headless Chromium (examples/web/test/drive.mjs: the page runs
the step file one step per call and times each call) and runs the same step file in Python's
onnxruntime with one thread and with onnxruntime's default threads, at the same batch; it prints
the median milliseconds per step of each and their ratios. The page's images of the last round
are compared with ``refdiff sample GENERATOR`` for the same seed. Needs `make test-js`'s
installs (Node.js, `npm ci` in examples/web, Chromium).

    python benchmarks/web_wasm.py runs/demo/generator.onnx
    python benchmarks/web_wasm.py runs/demo/generator.onnx --count 32 --rounds 5 \\
        --screenshot docs/images/web-page.png      # the screenshot README shows
    python benchmarks/web_wasm.py runs/demo/generator.onnx --software-webgpu --rounds 1
        # the page on WebGPU, on SwiftShader's software Vulkan: its pixels (its times say
        # nothing of a real GPU's)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from refdiff.cli import main as refdiff_main
from refdiff.runtime.generator import OnnxGenerator, OnnxStepper

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"


def _native_ms(step_file: Path, seed: int, count: int, threads: int, repeats: int) -> list[float]:
    """Milliseconds of each step call (not the start), ``repeats`` runs of every step."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(step_file), options, providers=["CPUExecutionProvider"])
    stepper = OnnxStepper(step_file)
    c, h, w = stepper.image_shape
    feed = {"seed": np.asarray(seed, np.int64), "sample_indices": np.arange(count, dtype=np.int64)}
    times = []
    for _ in range(repeats):
        x = np.zeros((count, c, h, w), np.float32)
        hist = np.zeros((stepper.history, count, c, h, w), np.float32)
        for k in range(-1, stepper.metadata.steps):
            t0 = time.perf_counter()
            x, hist, _ = session.run(
                None, {**feed, "step": np.asarray(k, np.int64), "x": x, "history": hist}
            )
            if k >= 0:
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def _browser(node: str, site: Path, tmp: Path, args: argparse.Namespace, shot: str | None):
    action = {"name": "run", "seed": str(args.seed), "count": args.count, "repeats": args.repeats}
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        action["screenshot"] = str(Path(shot).resolve())
    page = {"actions": [action], "software_webgpu": args.software_webgpu}
    job = {"site": str(site), "chromium": args.chromium, "pages": [page]}
    (tmp / "job.json").write_text(json.dumps(job))
    out = subprocess.run(
        [node, str(WEB / "test" / "drive.mjs"), str(tmp / "job.json"), str(tmp / "result.json")],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"the browser driver failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads((tmp / "result.json").read_text())
    record = next(r for r in result["results"] if r["name"] == "run")
    if record["state"] != "done":
        raise SystemExit(f"the page did not generate: {record.get('error') or record}")
    return record, result["chromium"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("generator", type=Path, help="a generator file with its -step.onnx beside it")
    p.add_argument("--count", type=int, default=16, help="images per run (the batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (browser, native)")
    p.add_argument("--repeats", type=int, default=3, help="runs of every step per round")
    p.add_argument("--chromium", default=os.environ.get("REFDIFF_CHROMIUM", "/usr/bin/chromium"))
    p.add_argument("--screenshot", default=None, help="save the page after the last run here")
    p.add_argument(
        "--software-webgpu",
        action="store_true",
        help="run the page on WebGPU on SwiftShader (Chromium's software Vulkan) instead of "
        "WebAssembly: its pixels against Python's; the times are not a GPU's",
    )
    args = p.parse_args()
    node = shutil.which("node")
    step_file = args.generator.with_name(args.generator.stem + "-step.onnx")
    for need, what in (
        (node, "Node.js"),
        (
            (WEB / "node_modules" / "onnxruntime-web").exists() or None,
            "examples/web's npm packages",
        ),
        (Path(args.chromium).exists() or None, f"Chromium at {args.chromium}"),
        (step_file.exists() or None, f"the step file {step_file}"),
    ):
        if need is None:
            raise SystemExit(f"{what} is missing (`make test-js` installs the tools)")
    gen = OnnxGenerator(args.generator)
    web_version = json.loads(
        (WEB / "node_modules" / "onnxruntime-web" / "package.json").read_text()
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        site = tmp / "site"
        subprocess.run(
            [node, str(WEB / "build.mjs"), str(args.generator), "--out", str(site)],
            check=True,
            capture_output=True,
        )
        wasm, one, default = [], [], []
        record, chromium = None, None
        for r in range(args.rounds):  # interleaved: each round times the browser, then native
            shot = args.screenshot if r == args.rounds - 1 else None
            record, chromium = _browser(node, site, tmp, args, shot)
            wasm += [ms for run in record["runs"] for ms in run]
            one += _native_ms(step_file, args.seed, args.count, 1, args.repeats)
            default += _native_ms(step_file, args.seed, args.count, 0, args.repeats)
        res = record["result"]
        refdiff_main(
            ["sample", str(args.generator), "--seed", str(args.seed), "--n", str(args.count),
             "--out", str(tmp / "py.png"), "--no-progress"]
        )  # fmt: skip
        want = np.load(tmp / "py.npz")["images"]
        images = np.asarray(res["images"], np.uint8).reshape(want.shape)
        samples = np.asarray(res["samples"], np.float32).reshape(want.shape)
        native = gen.run(args.seed, np.arange(args.count))[0]
        diff = np.abs(samples.astype(np.float64) - native)
    m_wasm, m_one, m_def = (float(np.median(v)) for v in (wasm, one, default))
    print(
        f"{args.generator}: {gen.metadata.describe()}; batch {args.count}, seed {args.seed}; "
        f"median of {args.rounds} interleaved rounds x {args.repeats} runs x "
        f"{gen.metadata.steps} steps\n"
        f"Chromium {chromium}, onnxruntime-web {web_version['version']} ({record['backend']}, "
        f"{'cross-origin isolated' if record['cross_origin_isolated'] else 'not isolated'}, "
        f"{os.cpu_count()} CPUs); Python onnxruntime {ort.__version__}\n"
    )
    print("| run | ms per step | vs native, 1 thread |")
    print("|---|---:|---:|")
    where = record["model_info"].rsplit(" on ", 1)[-1].rstrip(".")  # WebAssembly (1 thread)
    where += " on SwiftShader (software)" if args.software_webgpu else ""
    print(f"| browser, {where} | {m_wasm:.2f} | {m_wasm / m_one:.2f} |")
    print(f"| native onnxruntime, 1 thread | {m_one:.2f} | 1.00 |")
    print(f"| native onnxruntime, default threads | {m_def:.2f} | {m_def / m_one:.2f} |")
    print(
        f"\nthe page's images vs refdiff sample: {int((images != want).sum())} of {want.size} "
        f"uint8 pixels differ; float32 samples: max abs difference {diff.max():.1e}, max rel "
        f"{(diff / (1 + np.abs(native))).max():.1e}"
    )
    lo, hi = gen.diffusion.data_range
    for i in zip(*np.nonzero(images != want), strict=True):  # how close to a rounding boundary
        level = (float(native[i]) - lo) * 255 / (hi - lo)
        print(
            f"  pixel {tuple(int(j) for j in i)}: browser {images[i]}, Python {want[i]}; Python's "
            f"sample {native[i]:.8f} is level {level:.6f}, {abs(level % 1 - 0.5):.1e} levels from "
            f"the rounding boundary; the browser's {samples[i]:.8f}"
        )
    if args.screenshot:
        print(f"wrote the screenshot {args.screenshot}")


if __name__ == "__main__":
    main()
