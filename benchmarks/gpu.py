"""GPU performance, measured side by side in one run: one table of ratios.

    python benchmarks/gpu.py                 # on a CUDA machine: the cifar10 U-Net at batch 128
    python benchmarks/gpu.py --device cpu    # CPU mode (the tiny U-Net, small sizes): checks the script
    python benchmarks/gpu.py --write-docs    # also writes docs/benchmarks.md (card, driver, date, command)

Rows (each with its relative error against PyTorch fp32 on the same inputs):
  denoiser forward: PyTorch eager fp32 / TF32 / bf16 autocast / fp16, onnxruntime fp32 / TF32 /
  fp16, with IO binding and with CUDA graphs; sampling: 1000-step DDPM and 50-step DDIM through
  refdiff's ONNX runtime (CuPy, fused update) against a PyTorch loop with the usual per-step update
  (overhead = loop time / (steps x forward time) - 1); the fused update kernel against a
  device-to-device copy's bandwidth; training images/s and model-FLOP utilisation (bf16,
  channels-last, with and without torch.compile).

Every measurement is a median over repeats after warm-up, and every ratio compares rows of this one
run (single runs on a shared card vary by 10-30 %). A row that cannot run (an option this
onnxruntime lacks, say) is reported with its error instead of stopping the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from refdiff.export import export_onnx

import refdiff as rd
from refdiff import Diffusion
from refdiff.nn import count_parameters, preset, randomized_unet

ROOT = Path(__file__).resolve().parents[1]


class Bench:
    def __init__(self, device: str, repeats: int):
        self.device = device
        self.repeats = repeats
        self.rows: list[dict[str, Any]] = []

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def time(self, fn, repeats: int | None = None, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(repeats or self.repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    def add(self, *, section: str, name: str, value, unit: str, err=None, extra: str = "") -> None:
        self.rows.append(
            dict(section=section, name=name, value=value, unit=unit, err=err, extra=extra)
        )

    def row(
        self, section: str, name: str, fn, *, value=None, unit="ms", err=None, extra=""
    ) -> None:
        try:
            v = fn() if value is None else value
            self.add(section=section, name=name, value=v, unit=unit, err=err, extra=extra)
        except Exception as exc:  # a row that cannot run is reported, not fatal
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            self.add(section=section, name=name, value=None, unit=unit, extra=msg)
            traceback.print_exc(file=sys.stderr)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm((a - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument(
        "--preset", default=None, help="U-Net preset (default: cifar10 on CUDA, tiny on CPU)"
    )
    ap.add_argument(
        "--batch", type=int, default=None, help="batch size (default 128 on CUDA, 16 on CPU)"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per row (default 20 / 5)"
    )
    ap.add_argument("--ddpm-steps", type=int, default=None, help="default 1000 on CUDA, 50 on CPU")
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps (20 / 3)")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="bf16 dense peak for MFU (H100/H200 spec: 989)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument(
        "--write-docs", action="store_true", help="write the table to docs/benchmarks.md"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = "cuda" if cuda else "cpu"
    name = args.preset or ("cifar10" if cuda else "tiny")
    batch = args.batch or (128 if cuda else 16)
    repeats = args.repeats or (20 if cuda else 5)
    ddpm_steps = args.ddpm_steps or (1000 if cuda else 50)
    train_steps = args.train_steps or (20 if cuda else 3)
    if not cuda:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    b = Bench(device, repeats)

    cfg = preset(name)
    C, H = cfg.in_channels, cfg.image_size
    model = randomized_unet(cfg).to(device)
    diffusion = Diffusion(image_shape=(C, H, H))
    print(
        f"# {name} U-Net, {count_parameters(model) / 1e6:.1f} M parameters, batch {batch}, device {device}",
        file=sys.stderr,
    )
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, C, H, H), dtype=np.float32)
    t_np = rng.integers(0, 1000, batch).astype(np.int64)
    x = torch.from_numpy(x_np).to(device)
    t = torch.from_numpy(t_np).to(device)

    # ---- PyTorch eager forward --------------------------------------------------------------
    def torch_forward(mode: str):
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            torch.backends.cudnn.allow_tf32 = mode == "tf32"
        ctx = {
            "bf16": lambda: torch.autocast(device, dtype=torch.bfloat16),
            "fp16": lambda: torch.autocast(device, dtype=torch.float16),
        }.get(mode)

        def f():
            with torch.no_grad():
                if ctx is None:
                    return model(x, t)
                with ctx():
                    return model(x, t)

        return f

    with torch.no_grad():
        ref = torch_forward("fp32")().float().cpu().numpy()
    torch_modes = ["fp32", "tf32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
    times: dict[str, float] = {}
    for mode in torch_modes:
        f = torch_forward(mode)

        def run(f=f, mode=mode):
            times[f"torch-{mode}"] = b.time(f)
            return times[f"torch-{mode}"] * 1e3

        err = rel_err(f().float().cpu().numpy(), ref) if mode != "fp32" else 0.0
        b.row("forward", f"PyTorch eager {mode}", run, err=err)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    # ---- onnxruntime forward ----------------------------------------------------------------
    tmp = Path(tempfile.mkdtemp(prefix="refdiff-bench-"))
    cpu_model = model.cpu() if not cuda else randomized_unet(cfg)
    p32 = export_onnx(cpu_model, diffusion, tmp / "m32.onnx")
    p16 = export_onnx(cpu_model, diffusion, tmp / "m16.onnx", fp16=True)
    model.to(device)
    from refdiff.runtime import OnnxDenoiser

    def ort_rows():
        import onnxruntime as ort

        variants = [("fp32", p32, {}), ("fp16", p16, {})]
        if cuda:
            variants.insert(1, ("TF32", p32, {"use_tf32": "1"}))
            variants = [
                (n, p, {"cudnn_conv_algo_search": "EXHAUSTIVE", **o}) for n, p, o in variants
            ]
        for label, path, opts in variants:
            den = OnnxDenoiser(path, device=device, provider_options=opts or None)
            xs, ts = den.xp.asarray(x_np), den.xp.asarray(t_np)
            out = den(xs, ts)
            host = out.get() if hasattr(out, "get") else out
            e = rel_err(np.asarray(host), ref)

            def run(den=den, xs=xs, ts=ts, label=label):
                times[f"ort-{label}"] = b.time(lambda: den(xs, ts))
                return times[f"ort-{label}"] * 1e3

            b.row("forward", f"onnxruntime {label}" + (" (IO binding)" if cuda else ""), run, err=e)
            if cuda:
                graph_err: dict[str, float] = {}

                # CUDA graph: fixed input/output buffers bound once, replayed per call.
                def graph(path=path, opts=opts, label=label, graph_err=graph_err):
                    import cupy as cp

                    so = ort.SessionOptions()
                    sess = ort.InferenceSession(
                        str(path),
                        so,
                        providers=[("CUDAExecutionProvider", {**opts, "enable_cuda_graph": "1"})],
                    )
                    xi, ti = cp.asarray(x_np), cp.asarray(t_np)
                    oi = cp.empty((batch, C, H, H), cp.float32)
                    io = sess.io_binding()
                    io.bind_input("x", "cuda", 0, np.float32, xi.shape, xi.data.ptr)
                    io.bind_input("t", "cuda", 0, np.int64, ti.shape, ti.data.ptr)
                    io.bind_output("model_output", "cuda", 0, np.float32, oi.shape, oi.data.ptr)
                    sess.run_with_iobinding(io)  # capture
                    tm = b.time(lambda: sess.run_with_iobinding(io))
                    graph_err[label] = rel_err(oi.get(), ref)
                    return tm * 1e3

                b.row("forward", f"onnxruntime {label} + CUDA graph", graph)
                if label in graph_err:
                    b.rows[-1]["err"] = graph_err[label]

    ort_rows()

    # ---- sampling loops ---------------------------------------------------------------------
    sched = rd.get_schedule("linear", 1000)

    def torch_loop(steps_sched, ddim: bool):
        """The usual PyTorch loop: forward, then the update as separate torch ops, torch.randn."""
        s = steps_sched
        acp = torch.tensor(s.alphas_cumprod, device=device, dtype=torch.float32)
        acp_prev = torch.tensor(s.alphas_cumprod_prev, device=device, dtype=torch.float32)
        betas = torch.tensor(s.betas, device=device, dtype=torch.float32)
        tmap = torch.tensor(s.timestep_map, device=device)
        g = torch.Generator(device=device).manual_seed(0)

        def run():
            xx = torch.randn((batch, C, H, H), device=device, generator=g)
            for i in range(s.num_timesteps - 1, -1, -1):
                tt = tmap[i].expand(batch)
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                    eps = model(xx, tt).float()
                a, ap = acp[i], acp_prev[i]
                x0 = ((xx - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
                if ddim:
                    xx = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
                else:
                    mean = (ap.sqrt() * betas[i] / (1 - a)) * x0 + (
                        (1 - betas[i]).sqrt() * (1 - ap) / (1 - a)
                    ) * xx
                    if i > 0:
                        var = betas[i] * (1 - ap) / (1 - a)
                        xx = mean + var.sqrt() * torch.randn(xx.shape, device=device, generator=g)
                    else:
                        xx = mean
            return xx

        return run

    best_ort = "ort-fp16" if "ort-fp16" in times else "ort-fp32"
    best_torch = "torch-bf16" if cuda else "torch-fp32"
    for label, steps, ddim in (("DDPM", ddpm_steps, False), ("DDIM", args.ddim_steps, True)):
        s = sched if steps == 1000 else sched.respace(rd.space_timesteps(1000, steps))

        def ort_loop(s=s, ddim=ddim):
            den = OnnxDenoiser(p16 if best_ort == "ort-fp16" else p32, device=device)
            xp = den.xp
            kw = dict(xp=xp, dtype=xp.float32, seed=0)
            if ddim:
                fn = lambda: rd.ddim_sample(s, den, (batch, C, H, H), **kw)  # noqa: E731
            else:
                fn = lambda: rd.ddpm_sample(s, den, (batch, C, H, H), fused=cuda, **kw)  # noqa: E731
            tm = b.time(fn, repeats=1, warmup=0)
            per = times.get(best_ort, float("nan"))
            return tm, tm / (s.num_timesteps * per) - 1

        def tl(s=s, ddim=ddim):
            tm = b.time(torch_loop(s, ddim), repeats=1, warmup=0)
            return tm, tm / (s.num_timesteps * times[best_torch]) - 1

        for who, fn in (
            (f"refdiff ONNX runtime ({best_ort[4:]})", ort_loop),
            (f"PyTorch loop ({best_torch[6:]})", tl),
        ):
            try:
                tm, overhead = fn()
                b.add(
                    section="sampling",
                    name=f"{label} {s.num_timesteps} steps, {who}",
                    value=tm,
                    unit="s",
                    err=None,
                    extra=f"overhead {overhead * 100:+.1f} %",
                )
            except Exception as exc:
                b.add(
                    section="sampling",
                    name=f"{label} {s.num_timesteps} steps, {who}",
                    value=None,
                    unit="s",
                    err=None,
                    extra=f"{type(exc).__name__}: {exc}"[:140],
                )
                traceback.print_exc(file=sys.stderr)

    # ---- fused update vs copy bandwidth ------------------------------------------------------
    if cuda:

        def fused_rows():
            import cupy as cp

            from refdiff import Diffusion
            from refdiff.fused import plan_step_cuda

            xs = cp.asarray(x_np)
            es = cp.asarray(rng.standard_normal(x_np.shape, dtype=np.float32))
            idx = cp.arange(batch, dtype=cp.int64)
            out = cp.empty_like(xs)
            nbytes = xs.nbytes
            plan = Diffusion(sched, image_shape=x_np.shape[1:]).plan("ddpm")
            k = plan.steps // 2  # a step that draws noise
            tc = b.time(lambda: cp.copyto(out, xs), repeats=200)
            tf = b.time(
                lambda: plan_step_cuda(plan, k, xs, es, [], seed=0, sample_indices=idx),
                repeats=200,
            )
            copy_bw = 2 * nbytes / tc / 1e12
            fused_bw = 3 * nbytes / tf / 1e12
            b.add(
                section="update",
                name="device-to-device copy",
                value=copy_bw,
                unit="TB/s",
                err=None,
                extra="",
            )
            b.add(
                section="update",
                name="fused DDPM update + Philox noise",
                value=fused_bw,
                unit="TB/s",
                err=None,
                extra=f"{fused_bw / copy_bw * 100:.0f} % of copy",
            )

        try:
            fused_rows()
        except Exception as exc:
            b.add(
                section="update",
                name="fused DDPM update",
                value=None,
                unit="TB/s",
                err=None,
                extra=str(exc)[:140],
            )
    else:
        b.add(
            section="update",
            name="fused DDPM update",
            value=None,
            unit="TB/s",
            err=None,
            extra="needs CUDA + CuPy",
        )

    # ---- training throughput and MFU ---------------------------------------------------------
    def train_row(compile_: bool):
        from torch.utils.flop_counter import FlopCounterMode

        m = randomized_unet(cfg).to(device).train()
        if cuda:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=cuda)
        step_model = torch.compile(m) if compile_ else m
        xb = x.to(memory_format=torch.channels_last) if cuda else x

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                loss = (step_model(xb, t).float() - xb).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        tm = b.time(step, repeats=train_steps, warmup=2)
        ips = batch / tm
        mfu = flops / tm / (args.peak_tflops * 1e12) if cuda else float("nan")
        return ips, mfu

    variants = [False] if (args.no_compile or not cuda) else [False, True]
    for comp in variants:
        label = (
            f"train {'bf16 channels-last' if cuda else 'fp32'}{' + torch.compile' if comp else ''}"
        )
        try:
            ips, mfu = train_row(comp)
            b.add(
                section="training",
                name=label,
                value=ips,
                unit="img/s",
                err=None,
                extra=f"MFU {mfu * 100:.1f} %" if cuda else "",
            )
        except Exception as exc:
            b.add(
                section="training",
                name=label,
                value=None,
                unit="img/s",
                err=None,
                extra=str(exc)[:140],
            )
            traceback.print_exc(file=sys.stderr)

    # ---- the table ---------------------------------------------------------------------------
    base = times.get(best_torch)
    lines = [
        "| section | measurement | value | unit | rel. error vs PyTorch fp32 | ratio / note |",
        "|---|---|---|---|---|---|",
    ]
    for r in b.rows:
        v = "n/a" if r["value"] is None else f"{r['value']:.3g}"
        e = "" if r["err"] is None else f"{r['err']:.1e}"
        note = r["extra"]
        if r["section"] == "forward" and r["value"] is not None and base:
            note = (note + " " if note else "") + f"{r['value'] / (base * 1e3):.2f} x {best_torch}"
        lines.append(f"| {r['section']} | {r['name']} | {v} | {r['unit']} | {e} | {note} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(b.rows, indent=1, default=str))
    if args.write_docs:
        card = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
        driver = "n/a"
        if cuda:
            try:
                import subprocess

                driver = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
            except OSError:
                pass
        header = (
            "# Benchmarks\n\n"
            f"Measured by `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}` on {datetime.date.today()} "
            f"({card}, driver {driver}, torch {torch.__version__}, {name} U-Net at batch {batch}). "
            "Ratios compare rows of this one run.\n\n"
        )
        (ROOT / "docs" / "benchmarks.md").write_text(header + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
