"""Reference vectors for ports of refdiff's sampler to other languages (docs/ports.md).

``python -m refdiff.graph.reference --out refvectors`` writes language-neutral files (JSON, and
``.npy`` for arrays: NumPy's format, a 128-byte-aligned header and raw little-endian data,
readable in a few lines anywhere):

- ``philox.json``: Philox4x32-10 words and the standard normals of ``refdiff.noise`` for given
  (seed, sample index, step), seeds and indices beyond 2**32 included;
- ``schedules/<name>.json``: the float64 tables of a few schedules (ᾱ, the posterior's
  coefficients and variances, ...);
- ``plans/<sampler>-<steps>.json``: every sampler's plan (:meth:`refdiff.Plan.to_dict`) for small
  step counts, on the cosine schedule with T = 40 and v-prediction;
- ``trajectory/``: a whole run of each sampler with the exact denoiser of Gaussian data
  (:mod:`refdiff.graph.denoisers`, formulas in docs/ports.md), step by step: x_T, then x and x̂₀
  after each step, in float64 and in float32;
- ``onnx/``: that denoiser as an ONNX file, a generator file built from it, its step file, and
  the samples and uint8 images the generator must return for the seed and indices of
  ``onnx/expected.json``.

Everything is a pure function of refdiff's code: the same files on every machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .._io import make_dir, write_json
from ..noise import PRIOR_STEP, philox4x32, standard_normal
from ..samplers import SAMPLERS
from ..schedules import get_schedule
from ..settings import Diffusion
from .denoisers import gaussian_denoiser
from .generator import build_generator, build_step, save_model

__all__ = ["write_reference_vectors"]

#: (seed, sample index, step) of the noise vectors: small, 64-bit and the prior's step
NOISE_CASES = [
    (0, 0, 0),
    (1, 5, 999),
    (2**32 + 5, 2**33 + 7, 17),
    (2**63 - 1, 3, PRIOR_STEP),
    (123456789, 2**40, 4),
]
NOISE_SHAPE = (1, 5, 3)  # 15 values: not a multiple of 4 (the last quad is partly used)
TABLES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "log_betas",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "fixed_large_log_variance",
)
#: the model of the plans and trajectories: small enough to read, with every kind of step
DIFFUSION: dict[str, Any] = dict(prediction="v", variance="fixed_small", image_shape=(1, 3, 4))
GAUSSIAN: dict[str, Any] = {"mean": 0.1, "std": 0.6}
SEED, INDICES = 7, [0, 3, 2**33 + 1]


def _noise_vectors() -> list[dict[str, Any]]:
    out = []
    n = int(np.prod(NOISE_SHAPE))
    for seed, index, step in NOISE_CASES:
        quads = -(-(n + n % 2) // 4)
        counter = (
            np.arange(quads, dtype=np.int64),
            np.full(quads, step, dtype=np.int64),
            np.full(quads, index & 0xFFFFFFFF, dtype=np.int64),
            np.full(quads, index >> 32, dtype=np.int64),
        )
        words = np.stack(philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32), np), axis=-1)
        z = standard_normal(seed, np.array([index]), step, NOISE_SHAPE, xp=np)
        out.append(
            {
                "seed": seed,
                "sample_index": index,
                "step": step,
                "shape": list(NOISE_SHAPE),
                "words": words.astype(np.uint32).tolist(),  # [quad][4]
                "normals_float64": [float(v) for v in z.reshape(-1)],
                "normals_float32": [float(v) for v in z.astype(np.float32).reshape(-1)],
            }
        )
    return out


def _schedules(folder: Path) -> None:
    """``<name>.json`` (the description) and ``<name>/<table>.npy`` (float64; ±inf where a
    zero-terminal-SNR table has them, which JSON cannot hold)."""
    for name, sched in (
        ("linear-1000", get_schedule("linear", 1000)),
        ("cosine-1000", get_schedule("cosine", 1000)),
        ("cosine-40", get_schedule("cosine", 40)),
        ("cosine-1000-zero-terminal-snr", get_schedule("cosine", 1000, zero_terminal_snr=True)),
    ):
        make_dir(folder / name)
        for table in TABLES:
            np.save(folder / name / f"{table}.npy", np.asarray(getattr(sched, table), np.float64))
        write_json(folder / f"{name}.json", {"schedule": sched.to_dict(), "tables": list(TABLES)})


def _run(d: Diffusion, den: Any, choice: Any, x_T: np.ndarray) -> dict[str, Any]:
    """x_T, then x and x̂₀ after each step of one run."""
    xs: list[Any] = []
    x0s: list[Any] = []

    def grab(i: int, t: int, x: Any, pred_x0: Any) -> None:
        xs.append(np.asarray(x).tolist())
        x0s.append(np.asarray(pred_x0).tolist())

    d.sample(
        den,
        len(INDICES),
        sampler=choice,
        seed=SEED,
        sample_indices=np.array(INDICES),
        x_T=x_T,
        callback=grab,
    )
    return {"x_T": x_T.tolist(), "x": xs, "pred_x0": x0s}


def _trajectories(folder: Path, d: Diffusion, den_path: Path) -> None:
    """Each sampler's run with the exact Gaussian denoiser: in float64 (refdiff.oracle) and in
    float32 (the ONNX file of refdiff.graph.denoisers, which a port can run too)."""
    from ..runtime import OnnxDenoiser

    den32 = OnnxDenoiser(den_path)
    x_T = standard_normal(SEED, np.array(INDICES), PRIOR_STEP, d.image_shape, xp=np)
    for name, spec in SAMPLERS.items():
        choice = d.choose_sampler(name, 6)
        record: dict[str, Any] = {
            "sampler": choice.to_dict(),
            "seed": SEED,
            "sample_indices": INDICES,
            "plan": d.plan(choice).to_dict() if spec.plan is not None else None,
            "float64": _run(d, _float64(d), choice, x_T),
            "float32": _run(d, den32, choice, x_T.astype(np.float32)),
        }
        write_json(folder / f"{name}.json", record)


def _float64(d: Diffusion) -> Any:
    """The Gaussian denoiser in float64 (refdiff.oracle), for the float64 trajectories."""
    from ..oracle import GaussianMixture

    c, h, w = d.image_shape
    oracle = GaussianMixture.gaussian(np.full(c * h * w, GAUSSIAN["mean"]), GAUSSIAN["std"])
    inner = oracle.denoiser(d.schedule, d.prediction)

    def f(x: Any, t: Any) -> Any:
        return inner(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    return f


def write_reference_vectors(out: str | Path) -> Path:
    """Write every reference file under ``out`` (created); returns it."""
    out = Path(out)
    for sub in ("schedules", "plans", "trajectory", "onnx"):
        make_dir(out / sub)
    write_json(out / "philox.json", {"cases": _noise_vectors()})
    _schedules(out / "schedules")
    d = Diffusion(get_schedule("cosine", 40), **DIFFUSION)
    for name, spec in SAMPLERS.items():
        if spec.plan is None:
            continue
        for steps in (1, 2, 5, 10):
            write_json(out / "plans" / f"{name}-{steps}.json", d.plan(name, steps).to_dict())
    den_path = save_model(gaussian_denoiser(d, **GAUSSIAN), out / "onnx" / "gaussian-denoiser.onnx")
    _trajectories(out / "trajectory", d, den_path)
    import onnx

    from ..runtime.generator import OnnxGenerator

    proto = onnx.load(str(den_path))
    choice = d.choose_sampler("dpmpp_2m_sde", 6)
    gen_path = save_model(build_generator(proto, choice), out / "onnx" / "generator.onnx")
    save_model(build_step(proto, choice), out / "onnx" / "generator-step.onnx")
    samples, images = OnnxGenerator(gen_path).run(SEED, INDICES)
    np.save(out / "onnx" / "expected-samples.npy", samples)
    np.save(out / "onnx" / "expected-images.npy", images)
    write_json(
        out / "onnx" / "expected.json",
        {
            "seed": SEED,
            "sample_indices": INDICES,
            "sampler": choice.to_dict(),
            "gaussian": GAUSSIAN,
        },
    )
    write_json(
        out / "index.json",
        {
            "diffusion": d.to_dict(),
            "gaussian": GAUSSIAN,
            "files": {
                "philox.json": "Philox words and normals for (seed, sample index, step)",
                "schedules/": "float64 schedule tables",
                "plans/": "each sampler's plan at 1, 2, 5, 10 steps (the diffusion above)",
                "trajectory/": "each sampler's run with the exact Gaussian denoiser, per step",
                "onnx/": "the denoiser, a generator and its step file, and their expected output",
            },
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m refdiff.graph.reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="refvectors", help="folder to write (default: refvectors)")
    args = p.parse_args(argv)
    print(f"wrote {write_reference_vectors(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
