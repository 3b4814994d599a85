"""The `refdiff` command line as a new user meets it: every flag of `refdiff train` given with a
config file or `--resume` overrides the file or is refused by name; values that look like
negative numbers reach their option's own check; `refdiff demo --help` states the measured
duration; an .npz with several arrays can be named from the command line."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from refdiff.cli import build_parser, main
from refdiff.commands import train as train_cli
from refdiff.runs import RESUMABLE_KEYS, resolve_config
from refdiff.runs.unet_config import PRESETS

ROOT = Path(__file__).resolve().parent.parent

# One value per flag of `refdiff train`, each different from the digits recipe's configuration
# (the file the flags are given with). A new flag fails test_every_train_flag_is_walked until it
# gets one here.
EXAMPLES: dict[str, list[str]] = {
    "data": ["--data", "images.npz"],
    "image_size": ["--image-size", "4"],
    "channels": ["--channels", "3"],
    "holdout_fraction": ["--holdout-fraction", "0.2"],
    "value_range": ["--value-range", "0,1"],
    "npz_key": ["--npz-key", "pixels"],
    "flip": ["--flip"],
    "preset": ["--preset", "cifar10"],
    "base_channels": ["--base-channels", "32"],
    "channel_mult": ["--channel-mult", "1,2,2"],
    "num_res_blocks": ["--num-res-blocks", "1"],
    "attention_resolutions": ["--attention-resolutions", "8"],
    "dropout": ["--dropout", "0.3"],
    "num_groups": ["--num-groups", "4"],
    "schedule": ["--schedule", "cosine"],
    "timesteps": ["--timesteps", "300"],
    "prediction": ["--prediction", "epsilon"],
    "variance": ["--variance", "fixed_small"],
    "loss": ["--loss", "hybrid"],
    "timestep_sampler": ["--timestep-sampler", "uniform"],
    "optimizer": ["--optimizer", "adamw"],
    "lr": ["--lr", "0.01"],
    "weight_decay": ["--weight-decay", "0.1"],
    "warmup_steps": ["--warmup-steps", "7"],
    "grad_clip": ["--grad-clip", "0.5"],
    "batch_size": ["--batch-size", "32"],
    "steps": ["--steps", "4321"],
    "ema_rate": ["--ema-rate", "0.99"],
    "seed": ["--seed", "5"],
    "bf16": ["--bf16"],
    "channels_last": ["--channels-last"],
    "compile": ["--compile"],
    "log_every": ["--log-every", "7"],
    "eval_every": ["--eval-every", "70"],
    "sample_every": ["--sample-every", "70"],
    "checkpoint_every": ["--checkpoint-every", "70"],
    "keep": ["--keep", "5"],
    "eval_examples": ["--eval-examples", "17"],
    "eval_batch_size": ["--eval-batch-size", "17"],
    "eval_method": ["--eval-method", "mc"],
    "mc_draws": ["--mc-draws", "4"],
    "sampler": ["--sampler", "ddim"],
    "sample_steps": ["--sample-steps", "20"],
    "num_samples": ["--num-samples", "9"],
    "recipe": ["--recipe", "digits"],
}


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _honoured(dest: str, argv: list[str], printed: dict) -> bool:
    """Whether the printed configuration holds what the flag says."""
    flat = _flatten(printed)
    if dest == "preset":
        want = PRESETS[argv[1]]
        return all(
            flat[f"unet.{f}"] == list(getattr(want, f))
            if isinstance(getattr(want, f), tuple)
            else flat[f"unet.{f}"] == getattr(want, f)
            for f in ("base_channels", "channel_mult", "num_res_blocks", "in_channels")
        )
    args = _train_parser().parse_args([*argv, "--out", "x"])
    value = getattr(args, dest)
    value = list(value) if isinstance(value, tuple) else value
    got = flat[train_cli._KEYS[dest]]
    if dest == "image_size":
        return got == value and flat["unet.image_size"] == value
    return got == value


def _one_line_naming(err: str, flag: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("refdiff train: error: ") and flag in lines[0]


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run folder holding the full configuration of the digits recipe (as a run writes it)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(resolve_config(None, {"data": "digits"}).to_json())
    return run


def test_every_train_flag_is_walked():
    """Every flag is a config key (with an example below) or steers the process only."""
    dests = {a.dest for a in _train_parser()._actions}
    assert dests == set(train_cli._KEYS) | train_cli.PROCESS_FLAGS
    assert set(EXAMPLES) == set(train_cli._KEYS), "give every new flag an example value"


@pytest.mark.parametrize("dest", sorted(EXAMPLES))
def test_a_flag_with_a_config_file_overrides_it_or_is_refused_by_name(dest, run_folder, capsys):
    """`--config runs/t/config.json --preset cifar10` once printed the file's tiny U-Net."""
    argv = EXAMPLES[dest]
    base = ["train", "--config", str(run_folder / "config.json"), "--out", str(run_folder)]
    code = main([*base, *argv, "--print-config"])
    out, err = capsys.readouterr()
    if dest == "recipe":  # below a full configuration a recipe can change nothing
        assert code == 1 and _one_line_naming(err, "--recipe"), err
        return
    assert code == 0, err
    assert _honoured(dest, argv, json.loads(out)), (dest, out)


@pytest.mark.parametrize("dest", sorted(EXAMPLES))
def test_a_flag_with_resume_changes_the_reporting_or_is_refused_by_name(dest, run_folder, capsys):
    """`refdiff train --out runs/t --resume --preset cifar10` once resumed the tiny model."""
    argv = EXAMPLES[dest]
    code = main(["train", "--out", str(run_folder), "--resume", *argv, "--print-config"])
    out, err = capsys.readouterr()
    if train_cli._KEYS[dest] in RESUMABLE_KEYS:
        assert code == 0, err
        assert _honoured(dest, argv, json.loads(out)), (dest, out)
    else:
        assert code == 1 and _one_line_naming(err, argv[0]), err


def test_repeating_the_runs_own_values_on_resume_is_fine(run_folder, capsys):
    code = main(
        [
            *("train", "--out", str(run_folder), "--resume"),
            *("--lr", "0.002", "--prediction", "v", "--print-config"),
        ]
    )
    assert code == 0, capsys.readouterr().err


def test_a_preset_with_a_partial_file_starts_the_network_afresh(tmp_path, capsys):
    """A file's [unet] fields belong to the network it describes: --preset replaces them, and the
    network flags given with it apply on top."""
    cfg = tmp_path / "my_run.toml"
    cfg.write_text('data = "x.npz"\n[unet]\npreset = "tiny"\nbase_channels = 8\nnum_groups = 4\n')
    code = main(
        [
            *("train", "--config", str(cfg), "--out", str(tmp_path / "o")),
            *("--preset", "cifar10", "--dropout", "0.0", "--print-config"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    unet = json.loads(out)["unet"]
    assert unet["base_channels"] == 128 and unet["num_groups"] == 32 and unet["dropout"] == 0.0
    assert json.loads(out)["diffusion"]["image_shape"] == [3, 32, 32]


# ---- values that look like negative numbers, and `demo --help` --------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "m.onnx", "--shard", "-1/4"], "argument --shard: shard"),
        (["sample", "m.onnx", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["eval", "m.onnx", "--mc-draws", "-2"], "argument --mc-draws: must be >= 0, got -2"),
    ],
)
def test_a_value_starting_with_a_minus_reaches_its_check(argv, message, capsys):
    """`--shard -1/4` answered "expected one argument"."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "expected one argument" not in err, err


def test_demo_help_states_the_measured_duration(capsys):
    """`demo --help` said "about 10 min" where README measures 4."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    said = float(re.search(r"about ([\d.]+) minutes on a 2-core CPU", helptext).group(1))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    runs = [int(m) + int(s) / 60 for m, s in re.findall(r"(\d+) min (\d+) s", readme)]
    assert runs and all(abs(said - r) < 0.5 for r in runs), (said, runs)


# ---- an .npz with several arrays --------------------------------------------------------------


def test_npz_key_names_the_array_for_train_and_eval(tmp_path, capsys):
    """ "none is named 'images'; pass key=" -- but the command line had no such option."""
    rng = np.random.default_rng(0)
    data = tmp_path / "two.npz"
    np.savez(data, pixels=rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), other=np.zeros(3))
    out = tmp_path / "run"
    base = ["train", "--data", str(data), "--preset", "tiny", "--out", str(out), "--no-progress"]
    assert main([*base, "--steps", "0"]) == 1
    err = capsys.readouterr().err
    assert "none is named 'images'" in err and "--npz-key" in err and not out.exists()
    assert main([*base, "--npz-key", "nope", "--steps", "0"]) == 1
    assert "no array 'nope'" in capsys.readouterr().err
    config = resolve_config(
        None, {"data": str(data), "npz_key": "pixels", "unet": {"preset": "tiny"}}
    )
    assert config.npz_key == "pixels"
    from refdiff.training.data import load_training_data

    train, held, _ = load_training_data(config)
    assert train.shape[1:] == (1, 8, 8) and len(train) + len(held) == 40
    with pytest.raises(ValueError, match=r"an \.npz key applies to \.npz files only"):
        load_training_data(resolve_config(None, {"data": "digits", "npz_key": "pixels"}))
