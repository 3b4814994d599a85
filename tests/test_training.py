"""Tests of refdiff.training: config files and flags, the training step, the CLI, bad input.

The torch-free helpers it uses (refdiff.baseline, refdiff.images) are tested in
test_baseline_images.py, which runs without torch."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")

from refdiff.commands import train as train_cli  # noqa: E402
from refdiff.runs.train_config import (  # noqa: E402
    RECIPES,
    TrainConfig,
    config_differences,
    resolve_config,
)
from refdiff.runs.unet_config import preset  # noqa: E402
from refdiff.training.trainer import Trainer, load_training_data  # noqa: E402

MICRO = {
    "recipe": "none",
    "unet": {
        "preset": "tiny",
        "base_channels": 8,
        "num_groups": 4,
        "num_res_blocks": 1,
        "dropout": 0.0,
    },
    "diffusion": {"schedule": {"name": "cosine", "T": 8}},
    "batch_size": 8,
    "steps": 3,
    "log_every": 1,
    "eval_examples": 8,
    "num_samples": 4,
}


def micro(**top) -> TrainConfig:
    return resolve_config(None, {**MICRO, **top})


def quiet_trainer(config, out, **kw):
    return Trainer(config, out, device="cpu", progress=False, log=lambda s: None, **kw)


def test_config_round_trips_through_dict_and_json():
    cfg = micro(loss="hybrid", diffusion={"variance": "learned_range"}, grad_clip=None)
    assert cfg.unet.learn_sigma  # derived from the learned variance
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_json(json.dumps(cfg.to_dict())) == cfg
    assert TrainConfig.from_dict({}) == TrainConfig()


def test_toml_and_json_files_and_flags_override_them(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'data = "digits"\nrecipe = "none"\nlr = 0.003\nsteps = 77\n\n'
        '[unet]\npreset = "tiny"\ndropout = 0.25\n\n'
        '[diffusion]\nschedule = { name = "cosine", T = 50 }\nprediction = "v"\n'
    )
    cfg = resolve_config(toml)
    assert (cfg.lr, cfg.steps, cfg.unet.dropout) == (0.003, 77, 0.25)
    assert cfg.diffusion.schedule.to_dict() == {"name": "cosine", "T": 50, "params": {}}
    assert cfg.diffusion.prediction == "v"
    js = tmp_path / "run.json"
    js.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(js) == cfg
    flags = train_cli.overrides_from_args(
        parse(["--out", "x", "--config", str(toml), "--lr", "0.01", "--timesteps", "60"])
    )
    cfg2 = resolve_config(toml, flags)
    assert cfg2.lr == 0.01 and cfg2.steps == 77
    assert cfg2.diffusion.schedule.to_dict() == {"name": "cosine", "T": 60, "params": {}}


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\]"):
        resolve_config(None, {"learning_rate": 1.0})
    with pytest.raises(ValueError, match="widht"):
        resolve_config(None, {"unet": {"widht": 3}})
    with pytest.raises(ValueError, match="sheddule"):
        resolve_config(None, {"diffusion": {"sheddule": {}}})
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        resolve_config(bad)
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        other = tmp_path / "c.yaml"
        other.write_text("a: 1")
        resolve_config(other)


def test_digits_recipe_is_the_default_for_digits_with_tiny():
    cfg = resolve_config(None, {"data": "digits"})
    r = RECIPES["digits"]
    assert cfg.steps == r["steps"] and cfg.lr == r["lr"] and cfg.batch_size == r["batch_size"]
    assert cfg.diffusion.schedule.num_timesteps == r["diffusion"]["schedule"]["T"]
    assert cfg.loss == r["loss"] and cfg.diffusion.variance == r["diffusion"]["variance"]
    learned = cfg.diffusion.variance.startswith("learned")
    unet = {k: v for k, v in r["unet"].items() if k != "preset"}
    assert cfg.unet == preset("tiny", learn_sigma=learned, **unet)
    assert resolve_config(None, {"recipe": "none"}).steps == TrainConfig().steps
    assert resolve_config(None, {"steps": 5}).steps == 5  # flags win over the recipe
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_config(None, {"recipe": "cifar100"})


def test_impossible_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="attention resolution 16 is not reached"):
        micro(unet={**MICRO["unet"], "attention_resolutions": [16]})
    with pytest.raises(ValueError, match="not divisible by num_groups=3"):
        micro(unet={**MICRO["unet"], "num_groups": 3})
    with pytest.raises(ValueError, match="only trained by the 'hybrid' or 'vlb' loss"):
        micro(diffusion={"variance": "learned"})
    with pytest.raises(ValueError, match="learn_sigma"):
        micro(loss="hybrid", diffusion={"variance": "learned"}, unet={"learn_sigma": False})
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        micro(unet={"preset": "huge"})
    with pytest.raises(ValueError, match="ema_rate"):
        micro(ema_rate=1.0)
    with pytest.raises(ValueError, match="sample_steps"):
        micro(sample_steps=9)


def test_config_differences_names_nested_keys():
    a, b = micro(), micro(lr=1.0, unet={**MICRO["unet"], "base_channels": 12}, steps=99)
    assert set(config_differences(a, b)) == {"lr", "unet.base_channels"}


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


def test_training_step_is_the_core_on_torch_tensors(tmp_path):
    """The trainer's loss equals the core's functions called by hand on its inputs."""
    import array_api_compat.torch as xpt

    import refdiff
    from refdiff.data import to_model_range

    trainer = quiet_trainer(micro(timestep_sampler="uniform"), tmp_path / "r")
    rng_state = trainer.state.rng.bit_generator.state
    idx = trainer.state.batch_indices(0)
    loss, t, per_example = trainer.state.forward_backward()

    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    t_np, w = trainer.state.sampler.sample(8, rng)
    np.testing.assert_array_equal(t.numpy(), t_np)
    x0 = torch.from_numpy(to_model_range(trainer.train_images[idx]))
    noise = refdiff.standard_normal(
        trainer.state.noise_seed, torch.arange(8), 0, (1, 8, 8), xp=xpt, dtype=torch.float32
    )
    x_t = refdiff.q_sample(trainer.diffusion.schedule, x0, t, noise)
    with torch.no_grad():
        out = trainer.state.model(x_t, t)
    want = refdiff.training_losses(trainer.diffusion.schedule, out, x0, x_t, t, noise).loss
    torch.testing.assert_close(per_example, want, rtol=1e-6, atol=1e-7)
    assert float(loss) == pytest.approx(
        float((want * torch.from_numpy(w).float()).mean()), rel=1e-6
    )
    assert all(p.grad is not None for p in trainer.state.model.parameters())


def test_data_order_is_one_permutation_per_epoch(tmp_path):
    trainer = quiet_trainer(micro(batch_size=64), tmp_path / "r")
    n = len(trainer.train_images)
    steps = math.ceil(2 * n / 64)
    seen = np.concatenate([trainer.state.batch_indices(s) for s in range(steps)])
    assert sorted(seen[:n]) == list(range(n))
    assert sorted(seen[n : 2 * n]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n : 2 * n])


def test_warm_up_and_ema(tmp_path):
    trainer = quiet_trainer(micro(warmup_steps=4, lr=1e-3, ema_rate=0.5), tmp_path / "r")
    assert [trainer.state.lr_at(s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    before = [p.detach().clone() for p in trainer.state.ema.parameters()]
    info = trainer.state.train_step()
    assert info["lr"] == pytest.approx(2.5e-4) and math.isfinite(info["loss"])
    decay = min(0.5, 1 / 10)  # min(ema_rate, (1 + s) / (10 + s)) at s = 0
    for e, b, p in zip(
        trainer.state.ema.parameters(), before, trainer.state.model.parameters(), strict=True
    ):
        torch.testing.assert_close(e, decay * b + (1 - decay) * p)


def test_divergence_stops_training_before_the_update(tmp_path):
    trainer = quiet_trainer(micro(), tmp_path / "r")
    with torch.no_grad():
        trainer.state.model.conv_in.weight[0, 0, 0, 0] = float("nan")
    before = trainer.state.model.conv_out.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="lower --lr"):
        trainer.state.train_step()
    assert torch.equal(trainer.state.model.conv_out.weight, before) and trainer.state.step == 0


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="refdiff")
    sub = parser.add_subparsers(dest="command")
    train_cli.add_parser(sub)
    return parser.parse_args(["train", *argv])


def test_cli_module_does_not_import_torch():
    code = (
        "import sys, argparse; import refdiff.commands.train as c; "
        "p = argparse.ArgumentParser(); c.add_parser(p.add_subparsers()); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    for words in (
        "--data",
        "--resume",
        "--preset",
        "--timesteps",
        "examples:",
        "torchrun",
        "--config",
    ):
        assert words in text


def test_cli_trains_and_reports_where_files_went(tmp_path, capsys):
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(MICRO))
    out = tmp_path / "run"
    args = parse(["--config", str(cfg), "--out", str(out), "--no-progress", "--steps", "2"])
    assert train_cli.run(args) == 0
    text = capsys.readouterr().out
    assert "held-out bits/dim" in text and "per-pixel baseline" in text
    for name in ("config.json", "metrics.jsonl", "samples", "checkpoints"):
        assert str(out / name) in text
    png = sorted((out / "samples").glob("samples-*.png"))
    assert png and (out / "samples" / "trajectory-00000002.png").is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    evals = [r for r in records if "eval_bpd" in r]
    assert len(evals) == 1 and math.isfinite(evals[0]["eval_bpd"])
    assert evals[0]["baseline_bpd"] > 0 and records[0]["images_per_s"] > 0

    # Same folder again: refused without --resume; with it, training continues.
    with pytest.raises(FileExistsError, match="--resume"):
        train_cli.run(
            parse(["--config", str(cfg), "--out", str(out), "--no-progress", "--steps", "2"])
        )
    args = parse(["--out", str(out), "--resume", "--steps", "3", "--no-progress"])
    assert train_cli.run(args) == 0
    assert "trained steps 2..3" in capsys.readouterr().out


def test_output_folder_with_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(micro(lr=0.5).to_json())
    with pytest.raises(FileExistsError, match=r"different run.*lr"):
        quiet_trainer(micro(), out)
    with pytest.raises(ValueError, match=r"another configuration.*lr"):
        quiet_trainer(micro(), out, resume=True)


# ---------------------------------------------------------------------------------------------
# Bad data, surfaced by the trainer
# ---------------------------------------------------------------------------------------------


def save_png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "empty").mkdir(), "no image files"),
        (
            lambda d: [
                save_png(d / "mixed" / "a.png", (8, 8)),
                save_png(d / "mixed" / "b.png", (9, 8)),
            ],
            "images differ in size",
        ),
        (
            lambda d: np.savez(d / "bad.npz", pictures=np.zeros((4, 8, 8)), other=np.zeros(3)),
            "none is named 'images'",
        ),
        (
            lambda d: np.savez(d / "range.npz", images=np.full((4, 1, 8, 8), 1.5)),
            "outside value_range",
        ),
    ],
    ids=["empty-folder", "mixed-sizes", "npz-without-images", "values-out-of-range"],
)
def test_bad_data_is_surfaced(tmp_path, make, message):
    make(tmp_path)
    name = {"no image files": "empty", "images differ in size": "mixed"}.get(message)
    spec = tmp_path / name if name else next(tmp_path.glob("*.npz"))
    cfg = micro(data=str(spec), unet={**MICRO["unet"], "in_channels": 1})
    with pytest.raises(ValueError, match=f"cannot load the training data.*{message}"):
        quiet_trainer(cfg, tmp_path / "run")


def test_data_of_the_wrong_shape_names_both_shapes(tmp_path):
    np.savez(tmp_path / "rgb.npz", images=np.zeros((20, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"are 3x8x8 .* expects 1x8x8"):
        load_training_data(micro(data=str(tmp_path / "rgb.npz")))


def test_image_folder_is_resized_and_split(tmp_path):
    for i in range(10):
        save_png(tmp_path / "imgs" / f"{i}.png", (12 + i, 10))
    cfg = micro(data=str(tmp_path / "imgs"), image_size=8, holdout_fraction=0.2)
    train, held, _ = load_training_data(cfg)
    assert train.shape == (8, 1, 8, 8) and held.shape == (2, 1, 8, 8)


def test_a_schedule_flag_alone_completes_the_default_schedule(tmp_path, capsys):
    """`--schedule cosine` or `--timesteps 500` alone, without a recipe to merge into."""
    images = np.zeros((20, 1, 8, 8), np.uint8)
    np.savez(tmp_path / "x.npz", images=images)
    base = ["--data", str(tmp_path / "x.npz"), "--preset", "tiny", "--print-config"]
    for flags, want in (
        (["--schedule", "cosine"], {"name": "cosine", "params": {}, "T": 1000}),
        (["--timesteps", "500"], {"name": "linear", "params": {}, "T": 500}),
        (["--schedule", "cosine", "--timesteps", "40"], {"name": "cosine", "params": {}, "T": 40}),
    ):
        assert train_cli.run(parse([*base, *flags, "--out", str(tmp_path / "o")])) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["diffusion"]["schedule"] == want, flags


def test_cli_lists_only_the_files_it_wrote(tmp_path, capsys):
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(MICRO))
    out = tmp_path / "run"
    assert train_cli.run(parse(["--config", str(cfg), "--out", str(out), "--steps", "0"])) == 0
    text = capsys.readouterr().out
    assert (
        "nothing to do" in text and "metrics" not in text and not (out / "metrics.jsonl").exists()
    )
    assert str(out / "config.json") in text and (out / "config.json").is_file()


def test_cli_resume_of_a_missing_run_is_an_error(tmp_path, capsys):
    from refdiff.cli import main

    code = main(["train", "--out", str(tmp_path / "TYPO"), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "nothing to resume" in err and "TYPO" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "TYPO").exists()
