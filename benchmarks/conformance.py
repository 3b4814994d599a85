"""diffusers' DDPMScheduler and DDIMScheduler held against refdiff's core in float64.

For a sweep of the schedulers' settings (beta schedules, zero terminal SNR, prediction and
variance types, clipping, timestep spacings, DDIM's η and ``set_alpha_to_one``) the script
computes each quantity both ways and prints one table of the largest absolute and relative error
per quantity and group of settings:

- the tables: betas, ᾱ and 1 - ᾱ (the variance of q(x_t | x_0));
- ``add_noise`` against :func:`refdiff.q_sample`, at every timestep;
- one sampler step from fixed (x_t, model output) at the timesteps a run visits: the step's mean
  (the step with zero noise), its variance (the square of step(noise = 1) - step(noise = 0)),
  and the previous sample under the same standard-normal noise. The reference is refdiff's own
  ``ddpm_sample`` / ``ddim_sample`` run in float64 for that one step over the schedule respaced
  to the timesteps diffusers visits, so both sides are measured the same way.

Relative errors: elementwise for the tables (|d| / |refdiff|, entries where refdiff is > 0), and
normwise for arrays of samples (max |d| / max |refdiff|). diffusers computes in float32 (the
inputs here are float32 for both); a row is marked "float32" when its relative error stays
within 32 float32 ulps (2⁻¹⁹ ≈ 1.9e-6) and "departs" otherwise: docs/conformance.md explains
each departing row.

    python benchmarks/conformance.py                 # the table of docs/conformance.md
    python benchmarks/conformance.py --steps 20      # fewer inference steps, faster

Needs diffusers and torch (pip install "refdiff[diffusers]").
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import diffusers
import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from refdiff import ddim_sample, ddpm_sample, q_sample
from refdiff.diffusers_config import DiffusersOptionWarning, read_scheduler_config

T = 1000
SHAPE = (4, 3, 8, 8)
FLOAT32_ROUNDING = 2.0**-19  # 32 float32 ulps
SCHEDULES = {
    "linear": {"beta_schedule": "linear"},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "sigmoid": {"beta_schedule": "sigmoid"},
}
# every prediction and variance type the installed diffusers has (its Literal annotations)
_HINTS = typing.get_type_hints(DDPMScheduler.__init__)
PREDICTIONS = typing.get_args(_HINTS["prediction_type"])
VARIANCES = typing.get_args(_HINTS["variance_type"])


def _errors(ours, theirs, elementwise: bool) -> tuple[float, float]:
    """(max abs error, max rel error) of diffusers' ``theirs`` against refdiff's ``ours``."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    d = np.abs(theirs - ours)
    abs_err = float(d.max())
    if elementwise:
        pos = ours > 0
        rel = d[pos] / ours[pos]
        rel_err = float(rel.max()) if rel.size else 0.0
        if np.any(~pos & (d > 0)):
            rel_err = math.inf  # refdiff's value is 0, diffusers' is not
    else:
        scale = float(np.abs(ours).max())
        rel_err = abs_err / scale if scale > 0 else (math.inf if abs_err > 0 else 0.0)
    return abs_err, rel_err


def _worse(a: float, b: float) -> float:
    """max, with NaN winning."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


@dataclass
class Row:
    """The worst error of one quantity over a group of settings; ``max_rel64`` is that of
    diffusers' step run on float64 tables and inputs (None for the tables themselves)."""

    scheduler: str
    quantity: str
    group: str
    configs: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_rel64: float | None = None
    where: str = ""  # the settings with the largest relative error
    seen: set[str] = field(default_factory=set)

    def add(self, config: str, errors: tuple[float, float], rel64: float | None, at: str) -> None:
        if config not in self.seen:
            self.seen.add(config)
            self.configs += 1
        abs_err, rel_err = errors
        if rel64 is not None:
            self.max_rel64 = rel64 if self.max_rel64 is None else _worse(self.max_rel64, rel64)
        if math.isnan(self.max_abs):
            return  # the first NaN stays the worst
        if math.isnan(abs_err) or rel_err > self.max_rel or not self.where:
            self.where = f"{config}; {at}" if at else config
        self.max_abs = _worse(self.max_abs, abs_err)
        self.max_rel = _worse(self.max_rel, rel_err)

    @property
    def verdict(self) -> str:
        if math.isnan(self.max_rel):
            return "**departs: NaN**"
        if self.max_rel <= FLOAT32_ROUNDING:
            return "float32 rounding"
        if self.max_rel64 is not None and self.max_rel64 > 1e-9:
            return "**departs: another formula**"
        return "departs: float32 tables"


class Table:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}

    def add(
        self,
        scheduler,
        quantity,
        group,
        config,
        ours,
        theirs,
        theirs64=None,
        *,
        elementwise=False,
        at=None,
    ):
        errors = _errors(ours, theirs, elementwise)
        rel64 = None if theirs64 is None else _errors(ours, theirs64, elementwise)[1]
        key = (scheduler, quantity, group)
        row = self.rows.setdefault(key, Row(scheduler, quantity, group))
        row.add(config, errors, rel64, "" if at is None else f"t = {at}")

    def markdown(self) -> str:
        lines = [
            "| scheduler | quantity | settings | configs | max abs error | max rel error | "
            "max rel error, float64 tables | worst at | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows.values():
            rel64 = "–" if r.max_rel64 is None else f"{r.max_rel64:.2g}"
            lines.append(
                f"| {r.scheduler} | {r.quantity} | {r.group} | {r.configs} | {r.max_abs:.2g} | "
                f"{r.max_rel:.2g} | {rel64} | {r.where} | {r.verdict} |"
            )
        return "\n".join(lines)


def _settings(cls: str, config: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffusersOptionWarning)
        return read_scheduler_config(
            {"_class_name": cls, **config}, image_shape=SHAPE[1:]
        ).diffusion


def _describe(config: dict, steps: int | None = None) -> str:
    """The settings that vary, in words (the spacing only where a run is respaced)."""
    skip = {"num_train_timesteps", "beta_start", "beta_end"}
    if steps is None:
        skip.add("timestep_spacing")
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in skip)


def _float64_tables(sched, schedule):
    """diffusers' scheduler on refdiff's float64 betas, its ᾱ in float64: diffusers' formulas
    evaluated in float64, to tell a float32 departure from another formula."""
    betas = torch.from_numpy(np.array(schedule.betas))
    sched.betas = betas
    sched.alphas = 1.0 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    if isinstance(sched, DDIMScheduler):
        one = sched.config.set_alpha_to_one
        sched.final_alpha_cumprod = sched.one if one else sched.alphas_cumprod[0]
    return sched


# ---- the tables and add_noise -----------------------------------------------------------------


def tables(table: Table) -> None:
    """betas, ᾱ, 1 - ᾱ and add_noise of DDPMScheduler (DDIMScheduler builds its tables with the
    same code, without the sigmoid schedule)."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    eps = rng.standard_normal(SHAPE).astype(np.float32)
    s = "DDPMScheduler"
    for name, sched_cfg in SCHEDULES.items():
        for zero_snr in (False, True):
            config = {
                "num_train_timesteps": T,
                **sched_cfg,
                "rescale_betas_zero_snr": zero_snr,
                "prediction_type": "v_prediction",
            }
            theirs = DDPMScheduler(**config)
            ours = _settings(s, config).schedule
            group = "zero terminal SNR" if zero_snr else "4 beta schedules"
            desc = name
            table.add(s, "betas", group, desc, ours.betas, theirs.betas, elementwise=True)
            acp = theirs.alphas_cumprod.double().numpy()
            table.add(s, "ᾱ", group, desc, ours.alphas_cumprod, acp, elementwise=True)
            one_minus = 1.0 - theirs.alphas_cumprod.numpy()
            table.add(
                s, "1 - ᾱ", group, desc, 1.0 - ours.alphas_cumprod, one_minus, elementwise=True
            )
            theirs64 = _float64_tables(DDPMScheduler(**config), ours)
            x0_64, eps64 = x0.astype(np.float64), eps.astype(np.float64)
            for t in range(T):
                tt = torch.full((SHAPE[0],), t, dtype=torch.int64)
                got = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), tt)
                got64 = theirs64.add_noise(torch.from_numpy(x0_64), torch.from_numpy(eps64), tt)
                want = q_sample(ours, x0_64, t, eps64)
                table.add(s, "add_noise", group, desc, want, got.numpy(), got64.numpy(), at=t)


# ---- one sampler step -------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, x):
        self.x = x


def _stop(i, t, x, pred_x0):
    raise _Stop(x)


def _refdiff_step(sampler, schedule, ts, k, x, out, noise, settings, **options):
    """refdiff's sampler (float64) for the one step from ts[k] down, over ts[: k + 1]."""
    sched = schedule.respace(ts[: k + 1])
    try:
        sampler(
            sched,
            lambda x_, t_: out,
            x.shape,
            prediction=settings.prediction,
            variance=settings.variance,
            clip_denoised=settings.clip_denoised,
            data_range=settings.data_range,
            x_T=x,
            noise=lambda step, shape: noise,
            dtype=np.float64,
            callback=_stop,
            **options,
        )
    except _Stop as stop:
        return np.asarray(stop.x)
    raise AssertionError("the sampler took no step")


@contextlib.contextmanager
def _ddpm_noise(box: list) -> Iterator[None]:
    """DDPMScheduler.step draws its noise with randn_tensor (no argument takes it): hand it
    ``box[0]``."""
    original = diffusers_ddpm.randn_tensor
    diffusers_ddpm.randn_tensor = lambda shape, **kw: torch.from_numpy(box[0])
    try:
        yield
    finally:
        diffusers_ddpm.randn_tensor = original


def _inputs(rng, config, variance):
    x = rng.standard_normal(SHAPE).astype(np.float32)
    out = rng.standard_normal(SHAPE).astype(np.float32)
    if config.get("prediction_type") == "sample":
        out = np.clip(out, -1.5, 1.5)
    var = None
    if variance == "learned":  # σ² itself: positive, around 0.01
        var = rng.uniform(0.005, 0.02, SHAPE).astype(np.float32)
    elif variance == "learned_range":  # v in [-1, 1]
        var = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    z = rng.standard_normal(SHAPE).astype(np.float32)
    return x, out, var, z


def _visit(steps: int | None) -> list[int] | None:
    """Positions (in the ascending timestep list) at which to take a step: every step of a
    respaced run; a spread of timesteps, the first and last ones included, of a full run."""
    if steps is not None:
        return None
    return sorted({0, 1, 2, 5, 10, 20, 49, 50, 100, T // 4, T // 2, 3 * T // 4, T - 2, T - 1})


def _group(group: str, t: int, split: bool) -> str:
    """The group of a step: split at t = 50; below it 1 - ᾱ_t < ~1 %, and float32 ᾱ keeps
    few of its digits."""
    if not split:
        return group
    return f"{group}, t < 50" if t < 50 else f"{group}, t ≥ 50"


def ddpm_steps(table, group, config, steps, *, split=False, seed=0):
    cls = "DDPMScheduler"
    settings = _settings(cls, config)
    sched, sched64 = DDPMScheduler(**config), DDPMScheduler(**config)
    _float64_tables(sched64, settings.schedule)
    if steps is not None:
        sched.set_timesteps(steps)
        sched64.set_timesteps(steps)
    ts = np.sort(sched.timesteps.numpy())
    variance = config.get("variance_type", "fixed_small")
    rng = np.random.default_rng(seed)
    desc = _describe(config, steps) + ("" if steps is None else f", {steps} steps")
    box: list = [None]
    with _ddpm_noise(box):
        for k in _visit(steps) or range(len(ts)):
            t = int(ts[k])
            x, out, var, z = _inputs(rng, config, variance)
            model_out = out if var is None else np.concatenate([out, var], axis=1)
            # refdiff's learned takes log σ² (the exported graph applies the log)
            ours_out = model_out.astype(np.float64)
            if variance == "learned":
                ours_out = np.concatenate([out, np.log(var.astype(np.float64))], axis=1)
            results = {}
            for tag, noise in (("zero", np.zeros_like(z)), ("one", np.ones_like(z)), ("z", z)):
                box[0] = noise
                theirs = sched.step(torch.from_numpy(model_out), t, torch.from_numpy(x))
                x64, noise64 = x.astype(np.float64), noise.astype(np.float64)
                box[0] = noise64
                out64 = torch.from_numpy(model_out.astype(np.float64))
                theirs64 = sched64.step(out64, t, torch.from_numpy(x64))
                ours = _refdiff_step(
                    ddpm_sample, settings.schedule, ts, k, x64, ours_out, noise64, settings
                )
                results[tag] = (ours, theirs.prev_sample.numpy(), theirs64.prev_sample.numpy())
            _add_step(table, cls, _group(group, t, split), desc, results, t)


def ddim_steps(table, group, config, steps, eta, *, use_clipped=True, split=False, seed=0):
    cls = "DDIMScheduler"
    settings = _settings(cls, config)
    sched, sched64 = DDIMScheduler(**config), DDIMScheduler(**config)
    _float64_tables(sched64, settings.schedule)
    sched.set_timesteps(steps or T)
    sched64.set_timesteps(steps or T)
    ts = np.sort(sched.timesteps.numpy())
    rng = np.random.default_rng(seed)
    desc = _describe(config, steps) + f", eta={eta:g}"
    desc += "" if steps is None else f", {steps} steps"
    if not use_clipped:
        desc += ", use_clipped_model_output=False"
    for k in _visit(steps) or range(len(ts)):
        t = int(ts[k])
        x, out, _, z = _inputs(rng, config, "fixed_small")
        results = {}
        for tag, noise in (("zero", np.zeros_like(z)), ("one", np.ones_like(z)), ("z", z)):
            x64, out64, noise64 = (a.astype(np.float64) for a in (x, out, noise))
            theirs, theirs64 = (
                sc.step(
                    torch.from_numpy(o),
                    t,
                    torch.from_numpy(xx),
                    eta=eta,
                    use_clipped_model_output=use_clipped,
                    variance_noise=torch.from_numpy(n),
                ).prev_sample.numpy()
                for sc, o, xx, n in ((sched, out, x, noise), (sched64, out64, x64, noise64))
            )
            ours = _refdiff_step(
                ddim_sample, settings.schedule, ts, k, x64, out64, noise64, settings, eta=eta
            )
            results[tag] = (ours, theirs, theirs64)
        _add_step(table, cls, _group(group, t, split), desc, results, t)


def _add_step(table, cls, group, desc, results, t):
    """Mean (noise 0), variance ((step(1) - step(0))²) and the previous sample under noise z."""
    (mean, mean32, mean64), (one, one32, one64), (prev, prev32, prev64) = (
        results["zero"],
        results["one"],
        results["z"],
    )
    table.add(cls, "step mean", group, desc, mean, mean32, mean64, at=t)
    var, var32, var64 = (one - mean) ** 2, (one32 - mean32) ** 2, (one64 - mean64) ** 2
    table.add(cls, "step variance", group, desc, var, var32, var64, elementwise=True, at=t)
    table.add(cls, "previous sample", group, desc, prev, prev32, prev64, at=t)


def _schedule_sweep(base: dict, schedules: dict, matching: str) -> Iterator[tuple]:
    """(group, config, split) for each beta schedule, with and without zero terminal SNR
    (v-prediction, no clipping)."""
    for sched_cfg in schedules.values():
        for zero_snr in (False, True):
            config = {
                **base,
                **sched_cfg,
                "prediction_type": "v_prediction",
                "rescale_betas_zero_snr": zero_snr,
                "clip_sample": False,
            }
            yield ("zero terminal SNR" if zero_snr else matching), config, not zero_snr


def sweep(table: Table, steps: int) -> None:
    base = {"num_train_timesteps": T, "timestep_spacing": "leading"}
    matching = "settings refdiff follows"
    # DDPM: every prediction and variance type, with and without clipping, all T steps
    for pred in PREDICTIONS:
        for var in VARIANCES:
            for clip in (False, True):
                config = {
                    **base,
                    "prediction_type": pred,
                    "variance_type": var,
                    "clip_sample": clip,
                }
                if var == "fixed_large_log":
                    ddpm_steps(table, "variance_type fixed_large_log", config, None)
                else:
                    ddpm_steps(table, matching, config, None, split=True)
    # DDPM: the beta schedules, and zero terminal SNR (v-prediction)
    for group, config, split in _schedule_sweep(base, SCHEDULES, matching):
        ddpm_steps(table, group, config, None, split=split)
    # DDPM: respaced runs, each spacing
    for spacing in ("linspace", "leading", "trailing"):
        for var in ("fixed_small", "fixed_large", "learned_range"):
            config = {**base, "timestep_spacing": spacing, "variance_type": var}
            if spacing == "trailing":
                ddpm_steps(table, f"{steps} steps, 'trailing' spacing", config, steps)
            else:
                ddpm_steps(table, matching, config, steps, split=True)
    # DDIM: predictions, clipping (refdiff's DDIM is use_clipped_model_output=True), η
    for pred in PREDICTIONS:
        for clip in (False, True):
            for eta in (0.0, 1.0):
                config = {**base, "prediction_type": pred, "clip_sample": clip}
                ddim_steps(table, matching, config, None, eta, split=True)
                if clip:
                    ddim_steps(
                        table,
                        "clip_sample, use_clipped_model_output=False",
                        config,
                        None,
                        eta,
                        use_clipped=False,
                    )
    ddim_schedules = {k: v for k, v in SCHEDULES.items() if k != "sigmoid"}  # DDIM has none
    for group, config, split in _schedule_sweep(base, ddim_schedules, matching):
        ddim_steps(table, group, config, None, 0.0, split=split)
    for spacing in ("linspace", "leading", "trailing"):
        config = {**base, "timestep_spacing": spacing, "clip_sample": False}
        if spacing == "linspace":
            ddim_steps(table, f"{steps} steps, 'linspace' spacing", config, steps, 1.0)
            continue
        ddim_steps(table, matching, config, steps, 1.0, split=True)
        ddim_steps(
            table,
            f"{steps} steps, set_alpha_to_one=False",
            {**config, "set_alpha_to_one": False},
            steps,
            1.0,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="inference steps of the respaced runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not PREDICTIONS or not VARIANCES:
        raise SystemExit(
            f"diffusers {diffusers.__version__} does not list its prediction and variance types "
            "in its annotations; use a newer diffusers (0.42 does)"
        )
    t0 = time.perf_counter()
    table = Table()
    tables(table)
    sweep(table, args.steps)
    print(
        f"diffusers {diffusers.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
        f"T = {T}, inputs {list(SHAPE)} float32; refdiff in float64; "
        f"{time.perf_counter() - t0:.0f} s\n"
    )
    print(table.markdown())


if __name__ == "__main__":
    main()
