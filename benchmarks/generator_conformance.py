"""How far a generator file is from refdiff's Python sampler: the worst difference per sampler
over ε, x0 and v predictions and even, logsnr and Karras steps, on the tiny U-Net with random
weights (its metadata set to each prediction), and on a trained model (the demo's, if
``runs/demo/model.onnx`` exists, with its own settings and spacings), plus the float16 denoiser.

    python benchmarks/generator_conformance.py                     # writes nothing, prints tables
    python benchmarks/generator_conformance.py --model runs/demo/model.onnx --steps 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from refdiff.export import export_onnx

import refdiff as rd
from refdiff.graph.generator import build_generator, save_model
from refdiff.nn import UNetConfig, preset, randomized_unet
from refdiff.runtime import OnnxDenoiser, to_uint8
from refdiff.runtime.generator import OnnxGenerator

PLANNED = [n for n, s in rd.SAMPLERS.items() if s.plan is not None]
IDX = np.arange(8)


def worst(den_path: Path, proto, choice, folder: Path, seeds=(0, 1)) -> tuple[float, int, int]:
    gen = OnnxGenerator(save_model(build_generator(proto, choice), folder / "g.onnx"))
    den = OnnxDenoiser(den_path)
    d = den.diffusion
    diff, px, total = 0.0, 0, 0
    for seed in seeds:
        samples, images = gen.run(seed, IDX)
        want = d.sample(den, len(IDX), sampler=choice, seed=seed, sample_indices=IDX, xp=den.xp)
        diff = max(diff, float(np.abs(samples - want).max()))
        px += int(np.count_nonzero(images != to_uint8(want, d.data_range)))
        total += images.size
    return diff, px, total


def with_prediction(path: Path, prediction: str, folder: Path) -> tuple[Path, object]:
    proto = onnx.load(str(path))
    meta = json.loads(proto.metadata_props[0].value)
    meta["diffusion"]["prediction"] = prediction
    proto.metadata_props[0].value = json.dumps(meta)
    out = save_model(proto, folder / f"den-{prediction}.onnx")
    return out, proto


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/demo/model.onnx", help="a trained model (skipped if absent)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = preset("tiny")
        c, s = cfg.in_channels, cfg.image_size
        d = rd.Diffusion(
            {"name": "linear", "params": {}, "T": 1000},
            variance="learned_range" if cfg.learn_sigma else "fixed_small",
            image_shape=(c, s, s),
        )
        net = randomized_unet(UNetConfig.from_dict(cfg.to_dict()), 0)
        base = export_onnx(net, d, folder / "tiny.onnx")
        print(f"tiny U-Net (random weights, {d.variance.value}), {args.steps} steps, 8 samples x 2 seeds")
        print("| sampler | worst abs difference (ε, x0, v × even, logsnr, karras) | 8-bit pixels differing |")
        print("|---|---:|---:|")
        for name in PLANNED:
            w, px, total = 0.0, 0, 0
            for prediction in ("epsilon", "x0", "v"):
                den_path, proto = with_prediction(base, prediction, folder)
                dd = OnnxDenoiser(den_path).diffusion
                for spacing in ("even", "logsnr", "karras"):
                    r = worst(den_path, proto, dd.choose_sampler(name, args.steps, spacing), folder)
                    w, px, total = max(w, r[0]), px + r[1], total + r[2]
            print(f"| {name} | {w:.1e} | {px} of {total} |", flush=True)
        fp16 = export_onnx(net, d, folder / "tiny-fp16.onnx", fp16=True)
        proto = onnx.load(str(fp16))
        r = worst(fp16, proto, d.choose_sampler("dpmpp_2m", args.steps), folder)
        print(f"\nfloat16 denoiser, dpmpp_2m: worst abs difference {r[0]:.1e}, pixels differing {r[1]} of {r[2]}")
        model = Path(args.model)
        if model.is_file():
            proto = onnx.load(str(model))
            dd = OnnxDenoiser(model).diffusion
            print(f"\n{model} ({dd.prediction.value}, {dd.variance.value}, T = {dd.num_timesteps}), {args.steps} steps")
            print("| sampler | worst abs difference | 8-bit pixels differing |")
            print("|---|---:|---:|")
            for name in PLANNED:
                r = worst(model, proto, dd.choose_sampler(name, args.steps), folder)
                print(f"| {name} | {r[0]:.1e} | {r[1]} of {r[2]} |", flush=True)


if __name__ == "__main__":
    main()
