"""diffusers models in: a scheduler config as settings, a pipeline folder as a denoiser, exported
to ONNX, and refdiff's PyTorch-free DDPM and DDIM loops against diffusers' own, step for step.

The pipelines are tiny random ``UNet2DModel``s saved with ``save_pretrained`` into temporary
folders (nothing is downloaded). Parity: refdiff's samplers on the exported ONNX model (NumPy)
against diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` loops on the PyTorch UNet, with the
same x_T and the same noise injected at every step (refdiff's counter-based noise, handed to
diffusers through ``variance_noise`` for DDIM and through its ``randn_tensor`` for DDPM, whose
``step`` takes no noise argument).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import array_api_compat.numpy as npx  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm  # noqa: E402
from blocking import run_blocked_json  # noqa: E402
from conftest import read_npz  # noqa: E402
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from refdiff.export import (  # noqa: E402
    DiffusersDenoiser,
    export_onnx,
    load_diffusers,
    verify_onnx,
    wrap_unet,
)

from refdiff import ddim_sample, ddpm_sample, get_schedule, standard_normal  # noqa: E402
from refdiff._deps import MissingDependency  # noqa: E402
from refdiff.cli import main  # noqa: E402
from refdiff.diffusers_config import (  # noqa: E402
    DiffusersOptionWarning,
    diffusion_from_scheduler_config,
    is_diffusers_folder,
    read_diffusers_folder,
    read_scheduler_config,
)
from refdiff.noise import PRIOR_STEP  # noqa: E402
from refdiff.runtime import OnnxDenoiser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
T = 20
C = 3
SHAPE = (C, 8, 8)
B = 2
#: float32 loops of T = 20 steps on the same network (ONNX vs PyTorch, ~1e-6 apart per call)
ATOL = RTOL = 1e-4

PREDICTIONS = ("epsilon", "sample", "v_prediction")
VARIANCES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)


def test_the_parity_tests_cover_every_type_diffusers_has():
    """The prediction and variance types of the installed diffusers (its Literal annotations;
    older versions annotate plain str) are the ones swept below."""
    hints = typing.get_type_hints(DDPMScheduler.__init__)
    for key, ours in (("prediction_type", PREDICTIONS), ("variance_type", VARIANCES)):
        theirs = typing.get_args(hints[key])
        assert not theirs or set(theirs) == set(ours), (key, theirs)


def tiny_unet(out_channels: int, seed: int = 0, **config) -> UNet2DModel:
    """A random 8x8 UNet2DModel (45 k parameters; ``config`` overrides its settings). With 2C
    outputs the variance channels are kept near 0.1 (positive: diffusers' ``learned`` variance
    takes them as σ²)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        **{
            "sample_size": 8,
            "in_channels": C,
            "out_channels": out_channels,
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
            "norm_num_groups": 4,
            "attention_head_dim": 8,
            **config,
        }
    )
    if out_channels == 2 * C:
        with torch.no_grad():
            unet.conv_out.weight[C:] *= 0.05
            unet.conv_out.bias[C:] = 0.1
    return unet.eval()


def save_pipeline(folder: Path, unet: UNet2DModel, **scheduler: object) -> Path:
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler)).save_pretrained(str(folder))
    return folder


def _quiet_load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffusersOptionWarning)
        return load_diffusers(path, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(pipeline folder, exported ONNX file) per network: ``fixed`` (C outputs, through the
    command line), ``learned`` (2C outputs, σ²) and ``learned_range`` (2C outputs, v)."""
    base = tmp_path_factory.mktemp("diffusers")
    out = {}
    for name, channels, variance in (
        ("fixed", C, "fixed_small"),
        ("learned", 2 * C, "learned"),
        ("learned_range", 2 * C, "learned_range"),
    ):
        folder = save_pipeline(
            base / name, tiny_unet(channels), num_train_timesteps=T, variance_type=variance
        )
        path = base / f"{name}.onnx"
        if name == "fixed":
            assert main(["export", str(folder), "--out", str(path)]) == 0
        else:
            loaded = _quiet_load(folder)
            export_onnx(loaded.model, loaded.diffusion, path)
        out[name] = (folder, path)
    return out


# ---- the scheduler config as settings ---------------------------------------------------------


def _settings(**config):
    config.setdefault("num_train_timesteps", T)
    config.setdefault("timestep_spacing", "linspace")
    return read_scheduler_config(config, image_shape=SHAPE)


@pytest.mark.parametrize(
    ("cls", "schedule"),
    [
        *((DDPMScheduler, s) for s in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")),
        *((DDIMScheduler, s) for s in ("linear", "scaled_linear", "squaredcos_cap_v2")),
    ],
)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedules_are_diffusers_formulas_in_float64(cls, schedule, zero_snr):
    """refdiff's float64 betas and ᾱ, rounded to float32, are diffusers' float32 tables up to
    float32 arithmetic (diffusers evaluates the same formulas in float32)."""
    config = {
        "num_train_timesteps": 1000,
        "beta_schedule": schedule,
        "beta_start": 0.00085 if schedule == "scaled_linear" else 0.0001,
        "beta_end": 0.012 if schedule == "scaled_linear" else 0.02,
        "rescale_betas_zero_snr": zero_snr,
        "prediction_type": "v_prediction",
    }
    ours = read_scheduler_config(
        {"_class_name": cls.__name__, **config}, image_shape=SHAPE
    ).diffusion.schedule
    theirs = cls(**config)
    betas = theirs.betas.double().numpy()
    # float32 linspace and sigmoid: a few float32 ulps. diffusers' float32 rescaling recovers β
    # as 1 - ᾱ_t/ᾱ_{t-1}, which cancels digits (docs/conformance.md measures it)
    rtol = 1e-4 if zero_snr else 2e-6
    np.testing.assert_allclose(ours.betas, betas, rtol=rtol, atol=rtol * ours.betas.max())
    acp = theirs.alphas_cumprod.double().numpy()
    # a float32 cumulative product over 1000 steps drifts by up to ~1000 ulps
    np.testing.assert_allclose(ours.alphas_cumprod, acp, rtol=1e-4, atol=1e-7)
    assert ours.zero_terminal_snr == zero_snr
    if schedule == "squaredcos_cap_v2" and not zero_snr:
        assert ours.name == "cosine"
        # the same formula evaluated in float64 by both, diffusers rounding the result
        np.testing.assert_array_equal(ours.betas.astype(np.float32), betas.astype(np.float32))


def test_settings_map_each_key():
    s = _settings(prediction_type="v_prediction", variance_type="learned_range", clip_sample=False)
    d = s.diffusion
    assert (d.prediction.value, d.variance.value, d.clip_denoised) == ("v", "learned_range", False)
    assert d.schedule.to_dict() == {
        "name": "linear",
        "params": {"beta_start": 0.0001, "beta_end": 0.02},
        "T": T,
    }
    assert d.image_shape == SHAPE and d.data_range == (-1.0, 1.0) and s.notes == ()
    assert _settings(prediction_type="sample").diffusion.prediction.value == "x0"
    for raw, ours in (
        ("fixed_small", "fixed_small"),
        ("fixed_small_log", "fixed_small"),
        ("fixed_large", "fixed_large"),
        ("learned", "learned"),
    ):
        assert _settings(variance_type=raw).diffusion.variance.value == ours
    assert _settings(variance_type="learned").variance_is_sigma2
    assert not _settings(variance_type="learned_range").variance_is_sigma2
    betas = list(np.linspace(1e-3, 0.05, T))
    custom = _settings(trained_betas=betas, beta_schedule="scaled_linear").diffusion.schedule
    assert custom.name == "custom" and custom.betas.tolist() == betas  # exactly, over the schedule
    in_memory = DDPMScheduler(num_train_timesteps=T, trained_betas=np.array(betas)).config
    from_array = read_scheduler_config(dict(in_memory), image_shape=SHAPE).diffusion.schedule
    assert from_array.betas.tolist() == betas
    ddim = read_scheduler_config(
        {
            "_class_name": "DDIMScheduler",
            "num_train_timesteps": T,
            "clip_sample": False,
            "timestep_spacing": "linspace",
        },
        image_shape=SHAPE,
    )
    assert ddim.diffusion.variance.value == "fixed_small" and ddim.notes == ()
    # a diffusers-saved config file reads the same as the dict
    cfg = DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction").config
    assert read_scheduler_config(dict(cfg), image_shape=SHAPE).diffusion.prediction.value == "v"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"beta_schedule": "laplace"}, "beta_schedule 'laplace'"),
        ({"beta_schedule": "cubic"}, "beta_schedule 'cubic'"),
        ({"thresholding": True}, "thresholding"),
        ({"clip_sample_range": 2.0}, "clip_sample_range 2.0"),
        ({"prediction_type": "flow"}, "prediction_type 'flow'"),
        ({"variance_type": "wide"}, "variance_type 'wide'"),
        ({"timestep_spacing": "random"}, "timestep_spacing 'random'"),
        ({"use_karras_sigmas": True}, "use_karras_sigmas"),
        # a DDIM key in a DDPM config, a DDPM key in a DDIM config
        ({"_class_name": "DDPMScheduler", "set_alpha_to_one": False}, "set_alpha_to_one"),
        ({"_class_name": "DDIMScheduler", "variance_type": "learned"}, "variance_type"),
        ({"_class_name": "PNDMScheduler"}, "PNDMScheduler"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas has 2 values"),
        ({"trained_betas": [0.1] * (T - 1) + [1.5]}, "1.5"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),  # with epsilon
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"clip_sample": "yes"}, "clip_sample"),
        ({"beta_start": None}, "beta_start"),
    ],
)
def test_options_refdiff_cannot_honour_are_errors_naming_them(config, words):
    with pytest.raises((ValueError, TypeError), match=re.escape(words)):
        _settings(**config)


def test_output_channels_must_fit_the_variance():
    with pytest.raises(ValueError, match="needs 6 = 2C"):
        read_scheduler_config({"variance_type": "learned_range"}, image_shape=SHAPE, out_channels=C)
    with pytest.raises(ValueError, match="DDIMScheduler"):
        read_scheduler_config(
            {"_class_name": "DDIMScheduler"}, image_shape=SHAPE, out_channels=2 * C
        )


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"timestep_spacing": "leading"}, "timestep_spacing 'leading'"),
        ({"timestep_spacing": "trailing"}, "timestep_spacing 'trailing'"),
        ({"steps_offset": 1}, "steps_offset 1"),
        ({"variance_type": "fixed_large_log"}, "fixed_large_log"),
        (
            {"_class_name": "DDIMScheduler", "set_alpha_to_one": False, "clip_sample": False},
            "set_alpha_to_one",
        ),
        ({"_class_name": "DDIMScheduler"}, "use_clipped_model_output"),
    ],
)
def test_options_sampling_does_not_follow_are_documented_warnings(config, words):
    config = {"timestep_spacing": "linspace", **config}
    with pytest.warns(DiffusersOptionWarning, match=re.escape(words)):
        diffusion_from_scheduler_config(config, image_shape=SHAPE)
    # each note is in docs/diffusers.md
    docs = (ROOT / "docs" / "diffusers.md").read_text()
    assert words.split()[0].strip("'") in docs


def test_defaults_are_the_classes_defaults():
    """A config that omits keys reads as the class's defaults (what diffusers would build)."""
    for cls in (DDPMScheduler, DDIMScheduler):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DiffusersOptionWarning)
            bare = diffusion_from_scheduler_config({"_class_name": cls.__name__}, image_shape=SHAPE)
        full = read_scheduler_config(dict(cls().config), image_shape=SHAPE)
        assert full.scheduler_class == cls.__name__  # known by its keys
        assert bare == full.diffusion
        assert bare.num_timesteps == 1000 and bare.clip_denoised


# ---- folders and the torch side ---------------------------------------------------------------


def test_folders_are_recognised_and_read(exported, tmp_path):
    folder, _ = exported["fixed"]
    assert is_diffusers_folder(folder) and is_diffusers_folder(folder / "unet")
    assert not is_diffusers_folder(folder / "scheduler") and not is_diffusers_folder(tmp_path)
    whole = read_diffusers_folder(folder)
    assert whole.pipeline_class == "DDPMPipeline" and whole.unet_dir == folder / "unet"
    # a UNet folder finds the scheduler config in its sibling folder, or in itself
    alone = read_diffusers_folder(folder / "unet")
    assert alone.pipeline_class is None and alone.diffusion == whole.diffusion
    unet_only = tmp_path / "unet"
    unet_only.mkdir()
    for f in (folder / "unet").iterdir():
        (unet_only / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match="no scheduler config beside"):
        read_diffusers_folder(unet_only)
    (unet_only / "scheduler_config.json").write_text(
        (folder / "scheduler" / "scheduler_config.json").read_text()
    )
    assert read_diffusers_folder(unet_only).diffusion == whole.diffusion


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("file", "changes", "words"),
    [
        ("model_index.json", {"_class_name": "LDMPipeline"}, "'LDMPipeline' pipeline"),
        ("model_index.json", {"vqvae": ["diffusers", "VQModel"]}, "['scheduler', 'unet', 'vqvae']"),
        ("unet/config.json", {"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
        ("unet/config.json", {"num_class_embeds": 10}, "class-conditional UNet2DModel"),
        ("unet/config.json", {"class_embed_type": "timestep"}, "class-conditional UNet2DModel"),
        ("unet/config.json", {"time_embedding_type": "fourier"}, "'fourier'"),
        ("unet/config.json", {"sample_size": None}, "sample_size"),
        ("unet/config.json", {"_class_name": "Transformer2DModel"}, "Transformer2DModel"),
        ("scheduler/scheduler_config.json", {"thresholding": True}, "thresholding"),
        (
            "scheduler/scheduler_config.json",
            {"_class_name": "EulerDiscreteScheduler"},
            "EulerDiscreteScheduler",
        ),
    ],
)
def test_other_models_are_refused_naming_the_class(exported, tmp_path, file, changes, words):
    src, _ = exported["fixed"]
    folder = tmp_path / "pipe"
    for f in src.rglob("*.json"):
        (folder / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        (folder / f.relative_to(src)).write_text(f.read_text())
    _edit_json(folder / file, **changes)
    with pytest.raises(ValueError, match=re.escape(words)):
        read_diffusers_folder(folder)
    # and through the command line: exit 1, the reason on stderr
    assert main(["export", str(folder), "--out", str(tmp_path / "m.onnx")]) == 1


def test_missing_scheduler_config_and_weights_are_named(exported, tmp_path):
    src, _ = exported["fixed"]
    folder = tmp_path / "pipe"
    for f in src.rglob("*.json"):
        (folder / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        (folder / f.relative_to(src)).write_text(f.read_text())
    with pytest.raises(FileNotFoundError, match="no UNet weights"):
        _quiet_load(folder)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("scheduler_config.json")):
        read_diffusers_folder(folder)


def test_missing_diffusers_names_the_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingDependency, match=re.escape('pip install "refdiff[diffusers]"')):
        _quiet_load(exported["fixed"][0])


def test_export_writes_settings_and_model_config(exported):
    for name, (folder, path) in exported.items():
        den = OnnxDenoiser(path)
        folder_settings = read_diffusers_folder(folder).settings
        assert den.diffusion == folder_settings.diffusion
        model = den.metadata.model
        assert model["library"] == "diffusers" and model["class_name"] == "UNet2DModel"
        assert model["scheduler_class"] == "DDPMScheduler"
        assert model["scheduler_config"] == folder_settings.config
        assert model["config"]["block_out_channels"] == [8, 16]
        assert ("log" in model["variance_channels"]) == (name == "learned")


def test_check_compares_the_file_with_the_folder(exported, capsys):
    folder, path = exported["learned"]
    assert main(["check", str(path), str(folder)]) == 0
    assert "PASS" in capsys.readouterr().out
    # another folder (other weights, other config): the check fails and says why
    assert main(["check", str(path), str(exported["learned_range"][0])]) == 1
    assert "another model configuration" in capsys.readouterr().out
    assert main(["check", str(path), str(folder), "--no-ema"]) == 1
    assert "--no-ema (raw weights) applies to refdiff checkpoints" in capsys.readouterr().err


def test_learned_variance_channels_become_log_sigma2(exported):
    loaded = _quiet_load(exported["learned"][0])
    x = torch.randn(2, *SHAPE)
    t = torch.tensor([3, 17])
    with torch.no_grad():
        raw = loaded.model.unet(x, t).sample
        out = loaded.model(x, t)
    torch.testing.assert_close(out[:, :C], raw[:, :C], rtol=0, atol=0)
    torch.testing.assert_close(out[:, C:], torch.log(raw[:, C:]))


# ---- parity: refdiff's loops (ONNX, NumPy) against diffusers' (PyTorch) -------------------------


def _noise(seed: int, step: int) -> np.ndarray:
    return standard_normal(seed, np.arange(B), step, SHAPE, xp=npx, dtype=np.float32)


def _refdiff_loop(sampler, den, settings, timesteps, seed, **options):
    """refdiff's sampler on the ONNX denoiser over the (sorted) timesteps diffusers visits."""
    d = settings.diffusion
    ts = np.sort(np.asarray(timesteps))
    sched = d.schedule if len(ts) == d.num_timesteps else d.schedule.respace(ts)
    return sampler(
        sched,
        den,
        (B, *SHAPE),
        prediction=d.prediction,
        variance=d.variance,
        clip_denoised=d.clip_denoised,
        data_range=d.data_range,
        x_T=_noise(seed, PRIOR_STEP),
        noise=lambda step, shape: _noise(seed, step),
        **options,
    )


def _diffusers_ddpm(unet, config, steps, seed, monkeypatch):
    """diffusers' DDPM loop, drawing refdiff's noise of each step through ``randn_tensor``."""
    sched = DDPMScheduler(**config)
    sched.set_timesteps(steps)
    index = {int(t): i for i, t in enumerate(np.sort(sched.timesteps.numpy()))}
    now = {}

    def randn(shape, generator=None, device=None, dtype=None):
        assert tuple(shape) == (B, *SHAPE)
        return torch.from_numpy(_noise(seed, index[now["t"]]))

    monkeypatch.setattr(diffusers_ddpm, "randn_tensor", randn)
    x = torch.from_numpy(_noise(seed, PRIOR_STEP))
    with torch.no_grad():
        for t in sched.timesteps:
            now["t"] = int(t)
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    return x.numpy(), sched.timesteps.numpy()


def _network(variance: str) -> str:
    return variance if variance in ("learned", "learned_range") else "fixed"


def _assert_parity(ours, theirs):
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def _diffusers_ddim(unet, config, steps, seed, eta):
    sched = DDIMScheduler(**config)
    sched.set_timesteps(steps)
    index = {int(t): i for i, t in enumerate(np.sort(sched.timesteps.numpy()))}
    x = torch.from_numpy(_noise(seed, PRIOR_STEP))
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(
                unet(x, t).sample,
                t,
                x,
                eta=eta,
                use_clipped_model_output=True,
                variance_noise=torch.from_numpy(_noise(seed, index[int(t)])),
            ).prev_sample
    return x.numpy(), sched.timesteps.numpy()


def _compare(network, cls, config, steps, seed, diffusers_loop, sampler, against=None, **opts):
    """refdiff's ``sampler`` on the exported ``network`` with the settings of a ``cls``
    scheduler ``config`` against ``diffusers_loop`` on its PyTorch UNet with the config
    ``against`` (default: the same)."""
    folder, path = network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffusersOptionWarning)
        settings = read_scheduler_config({"_class_name": cls, **config}, image_shape=SHAPE)
    unet = _quiet_load(folder).model.unet
    theirs, timesteps = diffusers_loop(unet, against or config, steps, seed)
    ours = _refdiff_loop(sampler, OnnxDenoiser(path), settings, timesteps, seed, **opts)
    _assert_parity(ours, theirs)


# (clip_sample, steps, timestep_spacing): all T steps, and respaced runs
DDPM_RUNS = ((False, T, "leading"), (True, 5, "linspace"), (True, 4, "leading"))
DDIM_RUNS = ((False, T, "leading"), (True, 5, "leading"), (False, 4, "trailing"))


def _run_config(prediction: str, clip: bool, spacing: str, **extra) -> dict:
    return {
        "num_train_timesteps": T,
        "prediction_type": prediction,
        "clip_sample": clip,
        "timestep_spacing": spacing,
        **extra,
    }


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_loop_equals_diffusers(exported, monkeypatch, prediction, variance):
    def diffusers_loop(unet, config, steps, seed):
        return _diffusers_ddpm(unet, config, steps, seed, monkeypatch)

    for clip, steps, spacing in DDPM_RUNS:
        config = _run_config(prediction, clip, spacing, variance_type=variance)
        against = None
        if variance == "fixed_large_log":
            # diffusers steps with the square root of log β here: NaN (the documented note);
            # refdiff samples fixed_large, which is what diffusers' fixed_large gives
            unet = _quiet_load(exported["fixed"][0]).model.unet
            broken, _ = diffusers_loop(unet, config, steps, 1)
            assert np.isnan(broken).all(), "diffusers fixed this: update the note and docs"
            against = {**config, "variance_type": "fixed_large"}
        network = exported[_network(variance)]
        _compare(network, "DDPMScheduler", config, steps, 1, diffusers_loop, ddpm_sample, against)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_equals_diffusers(exported, prediction, eta):
    def diffusers_loop(unet, config, steps, seed):
        return _diffusers_ddim(unet, config, steps, seed, eta)

    for clip, steps, spacing in DDIM_RUNS:
        config = _run_config(prediction, clip, spacing)
        _compare(
            exported["fixed"],
            "DDIMScheduler",
            config,
            steps,
            2,
            diffusers_loop,
            ddim_sample,
            eta=eta,
        )


def test_zero_terminal_snr_loops_agree(exported, monkeypatch):
    """Zero terminal SNR (v-prediction): ᾱ_T = 0 exactly in both, x_T pure noise."""
    config = {
        "num_train_timesteps": T,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "clip_sample": False,
        "timestep_spacing": "linspace",
    }
    assert read_scheduler_config(config, image_shape=SHAPE).diffusion.schedule.zero_terminal_snr

    def ddpm_loop(unet, config, steps, seed):
        return _diffusers_ddpm(unet, config, steps, seed, monkeypatch)

    def ddim_loop(unet, config, steps, seed):
        return _diffusers_ddim(unet, config, steps, seed, 0.0)

    _compare(exported["fixed"], "DDPMScheduler", config, T, 3, ddpm_loop, ddpm_sample)
    _compare(exported["fixed"], "DDIMScheduler", config, T, 3, ddim_loop, ddim_sample)


# ---- what diffusers does not offer: the bound ----------------------------------------------------


def test_bound_of_a_diffusers_model_on_torch_equals_the_onnx_file(exported):
    """The variational bound of the diffusers UNet through the core on torch tensors equals the
    bound of the exported file on NumPy (same noise, same model up to ONNX rounding)."""
    folder, path = exported["learned_range"]
    loaded = _quiet_load(folder)
    x0 = (np.random.default_rng(0).integers(0, 256, (B, *SHAPE)) / 127.5 - 1).astype(np.float32)
    with torch.no_grad():
        on_torch = loaded.diffusion.bound(loaded.model, torch.from_numpy(x0))
    den = OnnxDenoiser(path)
    on_onnx = den.diffusion.bound(den, x0)
    np.testing.assert_allclose(on_torch.total_bpd.numpy(), on_onnx.total_bpd, rtol=1e-4)
    assert np.all(on_onnx.terms_bpd >= 0)


def test_wrap_unet_in_memory_matches_the_folder(exported):
    folder, path = exported["fixed"]
    unet = UNet2DModel.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    with pytest.warns(DiffusersOptionWarning, match="leading"):
        model, diffusion = wrap_unet(unet, config)
    assert diffusion == OnnxDenoiser(path).diffusion
    assert verify_onnx(model, path).ok
    with pytest.raises(ValueError, match="class-conditional UNet2DModel"):
        DiffusersDenoiser(tiny_unet(C, num_class_embeds=3))
    with pytest.raises(TypeError, match="Linear"):
        DiffusersDenoiser(torch.nn.Linear(2, 2))


# ---- a plain torch module through the Python API (docs/onnx.md) ---------------------------------


def test_the_plain_module_example_of_the_docs_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "onnx.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (example,) = [b for b in blocks if "class Denoiser(nn.Module)" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "docs/onnx.md", "exec"), namespace)
    den = OnnxDenoiser(tmp_path / "denoiser.onnx")
    assert den.diffusion == namespace["diffusion"]
    assert np.isfinite(namespace["images"]).all()


def test_squaredcos_cap_v2_is_refdiffs_cosine():
    """The same formula and parameters (s = 0.008, β capped at 0.999), bit for bit in float64."""
    ours = _settings(beta_schedule="squaredcos_cap_v2").diffusion.schedule
    np.testing.assert_array_equal(ours.betas, get_schedule("cosine", T).betas)


# ---- sample and eval without PyTorch --------------------------------------------------------------


def test_sample_and_eval_of_a_diffusers_export_run_without_torch(exported, tmp_path):
    from refdiff.runtime import sample_images

    _, path = exported["fixed"]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", images=rng.integers(0, 256, (6, *SHAPE), dtype=np.uint8))
    want = sample_images(OnnxDenoiser(path), 3, sampler="ddim", steps=5, seed=4, progress=False)
    result = run_blocked_json(
        f"""
        import json, sys
        import numpy as np
        from refdiff.cli import main
        sampled = main(["sample", {str(path)!r}, "--n", "3", "--sampler", "ddim", "--steps", "5",
                        "--seed", "4", "--out", "s.png", "--no-progress"])
        evaluated = main(["eval", {str(path)!r}, "--data", "images.npz", "--split", "all",
                          "--no-full", "--mc-draws", "2",
                          "--n-images", "4", "--out", "eval.json", "--no-progress"])
        print(json.dumps({{
            "sampled": sampled,
            "images": np.load("s.npz")["images"].tolist(),
            "evaluated": evaluated,
            "bpd": json.load(open("eval.json"))["bits_per_dim"]["bpd_mc"],
            "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None,
            "attempts": BLOCKED_ATTEMPTS,
        }}))
        """,
        tmp_path,
    )
    assert result["sampled"] == 0 and result["evaluated"] == 0
    assert not result["torch_loaded"] and result["attempts"] == []
    np.testing.assert_array_equal(np.array(result["images"], dtype=np.uint8), want)
    assert np.isfinite(result["bpd"]) and result["bpd"] > 0


def test_eval_and_sample_open_a_diffusers_folder_directly(exported, tmp_path, capsys):
    """The model door: `refdiff eval` and `refdiff sample` take the pipeline folder itself (through
    PyTorch) and give the figures of its exported ONNX file."""
    folder, path = exported["learned_range"]
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "images.npz", images=rng.integers(0, 256, (4, *SHAPE), dtype=np.uint8))
    common = ["--data", str(tmp_path / "images.npz"), "--split", "all", "--no-progress"]
    common += ["--no-full", "--mc-draws", "2"]
    reports = {}
    for name, model in (("folder", folder), ("onnx", path)):
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(model), *common, "--out", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    capsys.readouterr()
    assert reports["folder"]["model"]["kind"] == "diffusers"
    a, b = (reports[k]["bits_per_dim"]["bpd_mc"] for k in ("folder", "onnx"))
    assert a == pytest.approx(b, rel=1e-5) and np.isfinite(a)
    args = ["--n", "2", "--sampler", "ddim", "--steps", "4", "--no-progress"]
    assert main(["sample", str(folder), *args, "--out", str(tmp_path / "f.png")]) == 0
    assert main(["sample", str(path), *args, "--out", str(tmp_path / "o.png")]) == 0
    f, o = (read_npz(tmp_path / n)["images"].astype(int) for n in ("f.npz", "o.npz"))
    assert np.abs(f - o).max() <= 1  # the same samples but for values on a rounding boundary


def test_a_diffusers_folders_fingerprint_is_its_files_manifest(exported, tmp_path):
    from refdiff.models import open_model

    folder, _ = exported["learned_range"]
    files = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ]
    manifest = "".join(
        f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  {f}\n" for f in files
    )
    m = open_model(folder)
    assert m.fingerprint == hashlib.sha256(manifest.encode()).hexdigest()
    assert open_model(exported["learned"][0]).fingerprint != m.fingerprint
    # another schedule, the same weights: another model
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    _edit_json(copy / "scheduler" / "scheduler_config.json", beta_end=0.03)
    assert open_model(copy).fingerprint != m.fingerprint


@pytest.mark.slow
def test_the_ddpm_cifar10_pipeline_goes_through_export_sample_and_eval(tmp_path):
    """Done-when of issue 11: the paper's CIFAR-10 architecture as a diffusers DDPM pipeline
    (random weights) through `refdiff export`, then `refdiff sample` and `refdiff eval` with
    PyTorch blocked; the script is the transcript of docs/diffusers.md."""
    import subprocess

    script = ROOT / "benchmarks" / "diffusers_cifar10.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: 6 cases" in proc.stdout and "# PyTorch blocked" in proc.stdout
    den = OnnxDenoiser(tmp_path / "cifar10.onnx")
    assert den.diffusion.image_shape == (3, 32, 32) and den.diffusion.num_timesteps == 1000
    assert den.metadata.model["config"]["block_out_channels"] == [128, 256, 256, 256]
    with np.load(tmp_path / "samples.npz") as samples:
        assert samples["images"].shape == (4, 3, 32, 32)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["bits_per_dim"]["bpd_mc"] > 0


@pytest.mark.slow
def test_fp16_export_of_a_diffusers_pipeline(exported, tmp_path):
    folder, _ = exported["learned_range"]
    path = tmp_path / "fp16.onnx"
    assert main(["export", str(folder), "--out", str(path), "--fp16"]) == 0
    den = OnnxDenoiser(path)
    assert den.metadata.dtype == "float16"
    # the convolutions run in float16, group normalisation (exported as InstanceNormalization)
    # in float32
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = proto.graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    dtypes.update({i.name: i.data_type for i in g.initializer})

    def input_types(op: str) -> set[int]:
        return {dtypes[n.input[0]] for n in g.node if n.op_type == op}

    assert input_types("Conv") == {onnx.TensorProto.FLOAT16}
    assert input_types("InstanceNormalization") == {onnx.TensorProto.FLOAT}


def test_the_python_examples_of_docs_diffusers_run(exported, tmp_path, monkeypatch):
    """The respacing and bound examples of docs/diffusers.md, on the tiny pipeline standing in
    for ddpm-cifar10 (the export example is the API the tests above use)."""
    folder, path = exported["learned_range"]
    (tmp_path / "ddpm-cifar10").symlink_to(folder)
    (tmp_path / "cifar10.onnx").symlink_to(path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", images=rng.integers(0, 256, (4, *SHAPE), dtype=np.uint8))
    text = (ROOT / "docs" / "diffusers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    runnable = [b for b in blocks if "export_onnx(" not in b]
    assert len(runnable) == 2
    monkeypatch.chdir(tmp_path)
    for block in runnable:
        namespace: dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DiffusersOptionWarning)
            exec(compile(block, "docs/diffusers.md", "exec"), namespace)
        if "x" in namespace:
            assert namespace["x"].shape == (16, *SHAPE) and np.isfinite(namespace["x"]).all()
        else:
            assert torch.isfinite(namespace["result"].total_bpd).all()
