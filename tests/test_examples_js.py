"""The JavaScript examples against Python (docs/web.md): the same generator file and seeds give
the same images in Node.js (examples/node, onnxruntime-node), in headless Chromium
(examples/web, onnxruntime-web's WebAssembly) and in ``refdiff sample``.

The generators are built here from the tiny U-Net (random weights: every operator of a real
model, no training) with two samplers: DDPM (learned variances, noise every step) and the default
DPM-Solver++(2M) SDE (noise and a history of x̂₀); and DPM-Solver++(2M) around its float16
export. Each JavaScript result is compared with
``refdiff sample FILE`` (the same file in Python's onnxruntime) and with ``refdiff sample DENOISER
--sampler ...`` (refdiff's Python sampler loop):

- the float32 samples must agree within SAMPLE_RTOL relative to 1 + |sample|: the tolerance
  ``refdiff export`` and ``refdiff check`` hold a generator to against the Python sampler
  (refdiff.runtime.generator.compare_with_python);
- the uint8 pixels must be equal, except that a pixel may differ by one level where the Python
  sample lies within that tolerance of a rounding boundary (float rounding may carry it across).

Two browser runs do other arithmetic, and are held to ARITHMETIC_ATOL and ARITHMETIC_LEVELS
levels instead: a float16 network in WebAssembly (onnxruntime-web rounds float16 arithmetic
otherwise than native onnxruntime, whatever the optimization level; measured 7.9e-3, one level;
onnxruntime-node equals Python for it as for float32) and WebGPU, here on SwiftShader, Chromium's
software Vulkan (measured 6.4e-5, no level).

Every test prints the worst differences it saw; docs/web.md quotes them.

Without Node.js 20+, the npm packages (``npm ci`` in each example folder) or Chromium these tests
skip; ``make test-js`` installs all three and sets REFDIFF_REQUIRE_JS=1, which turns each skip
into a failure, so CI cannot pass them silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny_model import shared_export

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REQUIRED = os.environ.get("REFDIFF_REQUIRE_JS") == "1"
CHROMIUM = Path(os.environ.get("REFDIFF_CHROMIUM", "/usr/bin/chromium"))

#: How far the float32 samples of onnxruntime-node or onnxruntime-web may lie from Python's (the
#: generator in Python's onnxruntime, and refdiff's sampler loop), relative to 1 + |sample|; the
#: generator's own tolerance against the Python sampler (compare_with_python).
SAMPLE_RTOL = 1e-4
#: Where the browser's arithmetic differs: float16 in WebAssembly, WebGPU (the docstring).
ARITHMETIC_ATOL = 2e-2
ARITHMETIC_LEVELS = 2
#: name: (refdiff export's sampler flags, whether the denoiser is the float16 export)
SAMPLERS = {
    "ddpm": (["--sampler", "ddpm", "--steps", "10"], False),
    "dpmpp_2m_sde": (["--sampler", "dpmpp_2m_sde", "--steps", "8"], False),
    "dpmpp_2m_fp16": (["--sampler", "dpmpp_2m", "--steps", "8"], True),
}
SEEDS = (0, 7, 2**63 - 1)
N = 12


def _missing(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"{why} (REFDIFF_REQUIRE_JS=1: `make test-js` installs it)")
    pytest.skip(f"{why}; `make test-js` installs it")


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        _missing("Node.js (node) is not on PATH")
    version = _run([path, "--version"]).stdout.strip()
    if int(re.match(r"v(\d+)", version).group(1)) < 20:
        _missing(f"Node.js >= 20 is needed, found {version}")
    return path


def _need_packages(folder: str, *packages: str) -> None:
    for pkg in packages:
        if not (EXAMPLES / folder / "node_modules" / pkg / "package.json").exists():
            _missing(f"examples/{folder} lacks the npm package {pkg} (npm ci there)")


@pytest.fixture(scope="module")
def node_example(node: str) -> list[str]:
    _need_packages("node", "onnxruntime-node", "pngjs")
    return [node, str(EXAMPLES / "node" / "generate.mjs")]


@pytest.fixture(scope="module")
def web_example(node: str) -> str:
    _need_packages("web", "onnxruntime-web", "playwright-core")
    if not CHROMIUM.exists():
        _missing(f"Chromium is not at {CHROMIUM} (apt-get install chromium)")
    return node


@dataclass
class Files:
    folder: Path
    denoiser: Path
    denoiser_fp16: Path
    generators: dict[str, Path]

    def denoiser_of(self, sampler: str) -> Path:
        return self.denoiser_fp16 if SAMPLERS[sampler][1] else self.denoiser


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """The tiny U-Net's denoiser files (float32, float16) and a generator (with its step file)
    per sampler, written by ``refdiff export``."""
    from refdiff.cli import main

    files = Files(
        tmp_path_factory.mktemp("js-generators"),
        shared_export(tmp_path_factory),
        shared_export(tmp_path_factory, fp16=True),
        {},
    )
    for name, (flags, _) in SAMPLERS.items():
        files.generators[name] = files.folder / f"{name}.onnx"
        argv = ["export", str(files.denoiser_of(name)), "--out", str(files.generators[name])]
        assert main([*argv, *flags]) == 0
    return files


@dataclass
class Reference:
    """What Python draws for a seed: ``refdiff sample`` on the generator file and on the
    denoiser with the same sampler (images, grid), and their float32 samples."""

    images: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    grid: np.ndarray


_REFERENCES: dict[tuple[str, int, int], Reference] = {}


def reference(files: Files, sampler: str, seed: int, n: int, tmp: Path) -> Reference:
    key = (sampler, seed, n)
    if key in _REFERENCES:
        return _REFERENCES[key]
    from PIL import Image

    from refdiff.cli import main
    from refdiff.runtime import OnnxDenoiser, sample_array
    from refdiff.runtime.generator import OnnxGenerator

    gen = files.generators[sampler]
    common = ["--seed", str(seed), "--n", str(n), "--no-progress"]
    assert main(["sample", str(gen), *common, "--out", str(tmp / "gen.png")]) == 0
    argv = [
        "sample",
        str(files.denoiser_of(sampler)),
        *SAMPLERS[sampler][0],
        *common,
        "--out",
        str(tmp / "den.png"),
    ]
    assert main(argv) == 0
    images = {k: np.load(tmp / f"{k}.npz")["images"] for k in ("gen", "den")}
    generator = OnnxGenerator(gen)
    s = generator.metadata.sampler
    den = OnnxDenoiser(files.denoiser_of(sampler))
    choice = den.diffusion.choose_sampler(s["sampler"], s["steps"], s["spacing"], **s["options"])
    samples = {
        "gen": generator.run(seed, np.arange(n))[0],
        "den": sample_array(den, n, sampler=choice, seed=seed, progress=False),
    }
    grid = np.asarray(Image.open(tmp / "gen.png"))
    _REFERENCES[key] = Reference(images, samples, grid)
    return _REFERENCES[key]


@dataclass
class Agreement:
    """How far a JavaScript run lies from one Python reference."""

    max_abs: float
    max_rel: float
    pixels_differing: int
    pixels: int

    def line(self) -> str:
        return (
            f"max abs {self.max_abs:.1e}, max rel {self.max_rel:.1e}, uint8 pixels differing "
            f"{self.pixels_differing} of {self.pixels}"
        )


#: How the references are named in the printed lines.
REFERENCE_NAMES = {"gen": "vs refdiff sample FILE", "den": "vs the Python sampler"}


def agreement(
    samples: np.ndarray,
    images: np.ndarray,
    ref: Reference,
    data_range=(-1.0, 1.0),
    *,
    other_arithmetic: bool = False,
) -> str:
    """Compare a JavaScript run with both Python references, fail on anything beyond the
    tolerance of this module's docstring (``other_arithmetic``: float16 in WebAssembly, WebGPU),
    and say how far each one was."""
    samples = np.asarray(samples, np.float32)
    images = np.asarray(images, np.uint8)
    lo, hi = data_range
    lines = []
    for key, label in REFERENCE_NAMES.items():
        want, want_img = np.asarray(ref.samples[key], np.float32), ref.images[key]
        assert samples.shape == want.shape and images.shape == want_img.shape
        diff = np.abs(samples.astype(np.float64) - want)
        rel = diff / (1.0 + np.abs(want))
        step = np.abs(images.astype(int) - want_img.astype(int))
        differ = images != want_img
        found = Agreement(float(diff.max()), float(rel.max()), int(differ.sum()), images.size)
        lines.append(f"{label}: {found.line()}")
        if other_arithmetic:
            assert diff.max() <= ARITHMETIC_ATOL and step.max() <= ARITHMETIC_LEVELS, lines[-1]
            continue
        assert rel.max() <= SAMPLE_RTOL, f"samples differ from Python ({key}): {lines[-1]}"
        # a pixel may round the other way only where Python's sample is that close to a boundary
        level = (want.astype(np.float64) - lo) * (255.0 / (hi - lo))
        gap = np.abs(level - np.floor(level) - 0.5) * ((hi - lo) / 255.0)
        near = gap <= SAMPLE_RTOL * (1.0 + np.abs(want))
        bad = differ & ~(near & (step <= 1))
        assert not bad.any(), f"{int(bad.sum())} uint8 pixels differ from Python ({key})"
    return "; ".join(lines)


def _ungrid(grid: np.ndarray, n: int, c: int, h: int, w: int) -> np.ndarray:
    """The images of a ``refdiff.images.make_grid`` grid as refdiff sample lays it out."""
    scale, pad = max(1, 32 // max(h, w)), 2
    cols = min(int(np.ceil(np.sqrt(n))), n)
    grid = grid.reshape(grid.shape[0], grid.shape[1], -1)
    out = np.empty((n, c, h, w), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h * scale + pad), pad + q * (w * scale + pad)
        out[i] = grid[y : y + h * scale : scale, x : x + w * scale : scale].transpose(2, 0, 1)
    return out


# -- the shared module --------------------------------------------------------------------------


def test_shared_module_unit_tests(node: str) -> None:
    """node --test: protobuf reading, file kinds, seeds, counts, rounding, the grid layout."""
    out = _run([node, "--test", str(EXAMPLES / "shared" / "test")])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert re.search(r"^# fail 0$", out.stdout, re.M) and not re.search(
        r"^# pass 0$", out.stdout, re.M
    )


# -- Node.js -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_node_example_draws_python_pixels(node_example, files, sampler, tmp_path, capsys):
    """generate.mjs writes the grid refdiff sample writes, for seeds up to 2**63 - 1 and in
    batches of 5 (a sample depends on (seed, index) alone)."""
    from PIL import Image

    from refdiff.images import make_grid

    for seed in SEEDS:
        ref = reference(files, sampler, seed, N, tmp_path)
        png, npy = tmp_path / f"node-{seed}.png", tmp_path / f"node-{seed}.npy"
        argv = [*node_example, str(files.generators[sampler]), "--seed", str(seed), "--n", str(N)]
        out = _run([*argv, "--out", str(png), "--npy", str(npy), "--batch-size", "5"])
        assert out.returncode == 0, out.stderr
        assert f"wrote {png}" in out.stdout
        grid = np.asarray(Image.open(png))
        assert grid.shape == ref.grid.shape and grid.dtype == np.uint8
        images = _ungrid(grid, N, 1, 8, 8)
        np.testing.assert_array_equal(make_grid(images, scale=4)[:, :, 0], grid)  # the layout
        found = agreement(np.load(npy), images, ref)
        with capsys.disabled():
            print(f"\n  node {sampler} seed {seed}: {found}", end="")


def test_node_example_refuses_bad_input(node_example, files, tmp_path):
    """A missing, foreign, non-ONNX, denoiser or step file, a bad seed or count: one clear line,
    exit status 1 (files) or 2 (arguments), and no PNG written."""
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), foreign)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n" * 20)
    gen = str(files.generators["ddpm"])
    step = gen.replace(".onnx", "-step.onnx")
    cases = [
        ([str(tmp_path / "missing.onnx")], 1, "does not exist"),
        ([str(foreign)], 1, "without refdiff metadata"),
        ([str(text)], 1, "is not an ONNX"),
        ([str(files.denoiser)], 1, "is a refdiff denoiser"),
        ([step], 1, "is a refdiff step file"),
        ([gen, "--seed", "-3"], 2, "the seed must be >= 0, got -3"),
        ([gen, "--seed", "2.5"], 2, "the seed must be a whole number, got 2.5"),
        ([gen, "--seed", str(2**63)], 2, "below 2**63"),
        ([gen, "--n", "0"], 2, "--n must be at least 1, got 0"),
        ([gen, "--n", "three"], 2, "--n must be a whole number from 1"),
        ([gen, "--out", str(tmp_path / "x.jpg")], 2, "--out must end in .png"),
        ([gen, "--out", str(foreign / "x.png")], 1, "is not a folder"),  # under a file
        ([gen, "--out", "/proc/refdiff/x.png"], 1, "cannot write /proc/refdiff/x.png"),
    ]
    png = tmp_path / "out.png"
    for argv, code, message in cases:
        out = _run([*node_example, "--out", str(png), *argv])
        assert out.returncode == code, (argv, out.stderr)
        lines = out.stderr.splitlines()
        assert lines[0].startswith("generate.mjs: error: ") and message in lines[0], (argv, lines)
        assert lines[1:] == (["(node generate.mjs --help for usage)"] if code == 2 else [])
        assert not png.exists()


# -- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(web_example, files, tmp_path_factory):
    """The page built around the DDPM generator, other files beside it, driven in headless
    Chromium once; each test reads its part of the record."""
    import onnx
    from onnx import TensorProto, helper

    tmp = tmp_path_factory.mktemp("web")
    site = tmp / "site"
    node = web_example
    out = _run(
        [
            node,
            str(EXAMPLES / "web" / "build.mjs"),
            str(files.generators["ddpm"]),
            "--out",
            str(site),
        ]
    )
    assert out.returncode == 0, out.stderr
    models = site / "models"
    sde = files.generators["dpmpp_2m_sde"]
    shutil.copy(sde, models / "sde.onnx")
    shutil.copy(str(sde).replace(".onnx", "-step.onnx"), models / "sde-step.onnx")
    shutil.copy(sde, models / "nostep.onnx")  # no step file beside it: one call, no progress
    fp16 = files.generators["dpmpp_2m_fp16"]
    shutil.copy(fp16, models / "fp16.onnx")
    shutil.copy(str(fp16).replace(".onnx", "-step.onnx"), models / "fp16-step.onnx")
    shutil.copy(files.denoiser, models / "denoiser.onnx")
    shutil.copy(site / "index.html", models / "page.onnx")  # not ONNX at all
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), models / "foreign.onnx")
    big = str(2**63 - 1)
    actions = [
        {"name": "ddpm-0", "seed": "0", "count": N},
        {"name": f"ddpm-{big}", "seed": big, "count": N},
        {
            "name": "sde-7",
            "model": "models/sde.onnx",
            "seed": "7",
            "count": N,
            "repeats": 3,
            "screenshot": str(tmp / "page.png"),
        },
        {"name": "nostep-7", "model": "models/nostep.onnx", "seed": "7", "count": N},
        {"name": "fp16-3", "model": "models/fp16.onnx", "seed": "3", "count": N},
        {"name": "negative-seed", "seed": "-1", "count": 4},
        {"name": "fraction-seed", "seed": "2.5", "count": 4},
        {"name": "huge-seed", "seed": str(2**63), "count": 4},
        {"name": "count-over", "seed": "1", "count": 65},
        {"name": "count-zero", "seed": "1", "count": 0},
        {"name": "missing", "model": "models/missing.onnx"},
        {"name": "denoiser", "model": "models/denoiser.onnx"},
        {"name": "foreign", "model": "models/foreign.onnx"},
        {"name": "not-onnx", "model": "models/page.onnx"},
        {"name": "step-file", "model": "models/sde-step.onnx"},
        {"name": "recovers", "model": "models/generator.onnx", "seed": "0", "count": 4},
    ]
    # WebGPU on SwiftShader (software, slow): one small run of the DDPM generator
    webgpu = {"software_webgpu": True, "actions": [{"name": "webgpu-3", "seed": "3", "count": 4}]}
    pages = [{"actions": actions}, webgpu]
    job = {"site": str(site), "chromium": str(CHROMIUM), "pages": pages}
    (tmp / "job.json").write_text(json.dumps(job))
    t0 = time.perf_counter()
    out = _run(
        [
            node,
            str(EXAMPLES / "web" / "test" / "drive.mjs"),
            str(tmp / "job.json"),
            str(tmp / "result.json"),
        ]
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp / "result.json").read_text())
    records = {r["name"]: r for r in result["results"]}
    for r in records.values():
        assert r["state"] != "driver-error", r
    return {
        "records": records,
        "tmp": tmp,
        "seconds": time.perf_counter() - t0,
        "chromium": result["chromium"],
    }


def _canvas_images(record: dict) -> np.ndarray:
    """The pixels the page drew (grey: R = G = B), as uint8 [N, 1, H, W]."""
    out = []
    for c in record["canvases"]:
        rgba = np.asarray(c["rgba"], np.uint8).reshape(c["height"], c["width"], 4)
        assert (rgba[..., 3] == 255).all() and (rgba[..., 0] == rgba[..., 1]).all()
        out.append(rgba[None, :, :, 0])
    return np.stack(out)


@pytest.mark.parametrize(
    ("name", "sampler", "seed", "count", "stepwise", "backend"),
    [
        ("ddpm-0", "ddpm", 0, N, True, "wasm"),
        (f"ddpm-{2**63 - 1}", "ddpm", 2**63 - 1, N, True, "wasm"),
        ("sde-7", "dpmpp_2m_sde", 7, N, True, "wasm"),
        ("nostep-7", "dpmpp_2m_sde", 7, N, False, "wasm"),
        ("fp16-3", "dpmpp_2m_fp16", 3, N, True, "wasm"),
        ("webgpu-3", "ddpm", 3, 4, True, "webgpu"),
    ],
)
def test_page_draws_python_pixels(
    web, files, name, sampler, seed, count, stepwise, backend, tmp_path, capsys
):
    """The page's images (the result and the canvases it drew) against refdiff sample, step by
    step with the step file and in one call without it, on WebAssembly (headless Chromium with
    --disable-gpu offers no WebGPU adapter) and on WebGPU (SwiftShader's); where the arithmetic
    differs (float16 in WebAssembly, WebGPU) within its looser tolerance, with a note on the
    page."""
    r = web["records"][name]
    assert r["state"] == "done" and r["error"] is None, r["error"]
    assert r["backend"] == backend
    res = r["result"]
    assert res["stepwise"] is stepwise and res["seed"] == str(seed)
    assert res["shape"] == [count, 1, 8, 8]
    images = np.asarray(res["images"], np.uint8).reshape(res["shape"])
    np.testing.assert_array_equal(_canvas_images(r), images)
    samples = np.asarray(res["samples"], np.float32).reshape(res["shape"])
    float16 = SAMPLERS[sampler][1]
    ref = reference(files, sampler, seed, count, tmp_path)
    found = agreement(samples, images, ref, other_arithmetic=float16 or backend == "webgpu")
    note = r["note"] or ""
    assert ("float16" in note) is float16 and ("On WebGPU" in note) is (backend == "webgpu")
    assert f"done: {count} images, seed {seed}" in r["status"]
    assert ("progress per step from its step file" in r["model_info"]) is stepwise
    with capsys.disabled():
        print(f"\n  browser {name}: {found}", end="")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("negative-seed", "The seed must be >= 0, got -1"),
        ("fraction-seed", "The seed must be a whole number, got 2.5"),
        ("huge-seed", "The seed must be below 2**63"),
        ("count-over", "The number of images must be at most 64 (this page’s limit"),
        ("count-zero", "The number of images must be at least 1, got 0"),
        ("missing", "The model file models/missing.onnx was not found on this server (HTTP 404)"),
        ("denoiser", "The file models/denoiser.onnx is a refdiff denoiser"),
        ("foreign", "The file models/foreign.onnx is an ONNX model without refdiff metadata"),
        ("not-onnx", "The file models/page.onnx is not an ONNX file"),
        ("step-file", "The file models/sde-step.onnx is a refdiff step file, not a generator"),
    ],
)
def test_page_says_what_is_wrong(web, name, message):
    """Bad input gets one message on the page, and no images (an earlier run's are cleared)."""
    r = web["records"][name]
    assert r["state"] == "error"
    assert r["error"] is not None and r["error"].startswith(message), r["error"]
    assert r["canvases"] == [] and r["result"] is None
    if name in ("missing", "denoiser", "foreign", "not-onnx", "step-file"):
        assert r["model_info"] == "No generator loaded."


def test_page_recovers_and_shows_progress(web):
    """After the errors a generator loads again and draws the same images as before; the page
    told the step count, and took the screenshot docs/web.md describes."""
    from PIL import Image

    first, again = web["records"]["ddpm-0"], web["records"]["recovers"]
    assert again["state"] == "done"
    assert again["result"]["images"] == first["result"]["images"][: len(again["result"]["images"])]
    sde = web["records"]["sde-7"]
    assert len(sde["runs"]) == 3 and all(len(run) == 8 for run in sde["runs"])  # ms per step
    assert re.search(
        r"8 steps, [\d.]+ ms per step \(median over the steps\) on WebAssembly", sde["timing"]
    )
    with Image.open(sde["screenshot"]) as shot:
        assert shot.format == "PNG" and shot.size[0] == 1000


def test_page_time_per_step_against_native(web, files, capsys):
    """Prints the page's WebAssembly time per step (median of 3 runs x 8 steps of 12 samples, one
    thread on this 2-core machine) against Python's onnxruntime on the same step file, also one
    thread; benchmarks/web_wasm.py measures it interleaved, on the demo's model."""
    import onnxruntime as ort

    from refdiff.runtime.generator import OnnxStepper

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    step_file = str(files.generators["dpmpp_2m_sde"]).replace(".onnx", "-step.onnx")
    session = ort.InferenceSession(step_file, options, providers=["CPUExecutionProvider"])
    history = OnnxStepper(step_file).history
    feed = {"seed": np.asarray(7, np.int64), "sample_indices": np.arange(N, dtype=np.int64)}
    native = []
    for _ in range(3):
        x = np.zeros((N, 1, 8, 8), np.float32)
        hist = np.zeros((history, N, 1, 8, 8), np.float32)
        for k in range(-1, 8):
            t0 = time.perf_counter()
            x, hist, _ = session.run(
                None, {**feed, "step": np.asarray(k, np.int64), "x": x, "history": hist}
            )
            if k >= 0:
                native.append((time.perf_counter() - t0) * 1e3)
    wasm = [ms for run in web["records"]["sde-7"]["runs"] for ms in run]
    assert len(wasm) == 24 and all(ms > 0 for ms in wasm)
    with capsys.disabled():
        print(
            f"\n  time per step, tiny U-Net, batch {N}, 1 thread: WebAssembly (Chromium "
            f"{web['chromium']}) {np.median(wasm):.2f} ms, native onnxruntime "
            f"{np.median(native):.2f} ms: {np.median(wasm) / np.median(native):.1f}x; "
            f"the browser run took {web['seconds']:.0f} s",
            end="",
        )
