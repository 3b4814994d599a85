"""Tests of refdiff.training.checkpoint: safetensors + JSON, atomic, verified, resumable exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from refdiff.nn.unet import UNet  # noqa: E402
from refdiff.runs.folder import RunFolder, find_checkpoint  # noqa: E402
from refdiff.runs.train_config import TrainConfig, resolve_config  # noqa: E402
from refdiff.training.checkpoint import (  # noqa: E402
    check_same_config,
    load_checkpoint,
    load_model,
)
from refdiff.training.step import TrainState  # noqa: E402
from refdiff.training.trainer import Trainer  # noqa: E402


def micro_config(**top) -> TrainConfig:
    """A U-Net small enough to train a few steps on the digits in a second."""
    d = {
        "recipe": "none",
        "data": "digits",
        "unet": {
            "preset": "tiny",
            "base_channels": 8,
            "num_groups": 4,
            "num_res_blocks": 1,
            "dropout": 0.0,
        },
        "diffusion": {"schedule": {"name": "cosine", "T": 10}},
        "batch_size": 8,
        "steps": 4,
        "lr": 1e-3,
        "log_every": 1,
        "checkpoint_every": 2,
        "eval_examples": 8,
        "num_samples": 4,
        "ema_rate": 0.9,
    }
    d.update(top)
    return resolve_config(None, d)


def run(config: TrainConfig, out: Path, *, resume: bool = False, steps: int | None = None):
    trainer = Trainer(config, out, resume=resume, device="cpu", progress=False, log=lambda s: None)
    try:
        return trainer, trainer.train(steps)
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    trainer, summary = run(micro_config(keep_checkpoints=2, steps=6), out)
    return out, trainer, summary


def test_layout_and_round_trip(trained_run):
    out, trainer, summary = trained_run
    ckpts = RunFolder(out).checkpoints()
    assert [p.name for p in ckpts] == ["ckpt-00000004", "ckpt-00000006"]  # keep = 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    files = sorted(p.name for p in ckpts[-1].iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    assert summary["checkpoint"] == str(ckpts[-1])
    for path in (out, out / "checkpoints", ckpts[-1]):
        assert find_checkpoint(path) == ckpts[-1]

    ckpt = load_checkpoint(out)
    assert ckpt.step == 6
    assert ckpt.config == trainer.config
    for name, value in trainer.state.model.state_dict().items():
        assert torch.equal(ckpt.model_state[name], value)
    for name, value in trainer.state.ema.state_dict().items():
        assert torch.equal(ckpt.ema_state[name], value)
    opt = trainer.state.optimizer.state_dict()
    assert ckpt.optimizer_state["param_groups"][0]["lr"] == opt["param_groups"][0]["lr"]
    for pid, st in opt["state"].items():
        for key, value in st.items():
            assert torch.equal(ckpt.optimizer_state["state"][pid][key], value)
    assert ckpt.numpy_rng == trainer.state.rng.bit_generator.state
    assert ckpt.timestep_sampler == trainer.state.sampler.state_dict()


def test_load_model_gives_the_ema_weights_in_eval_mode(trained_run):
    out, trainer, _ = trained_run
    model, diffusion = load_model(out)
    assert isinstance(model, UNet) and not model.training
    assert diffusion == trainer.config.diffusion
    assert next(model.parameters()).device.type == "cpu"
    for name, value in trainer.state.ema.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    raw, _ = load_model(find_checkpoint(out), ema=False)
    for name, value in trainer.state.model.state_dict().items():
        assert torch.equal(raw.state_dict()[name], value)


def test_state_json_is_plain_json(trained_run):
    out, _, _ = trained_run
    state = json.loads((find_checkpoint(out) / "state.json").read_text())
    assert state["step"] == 6
    assert set(state["files"]) == {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    assert isinstance(state["torch_rng"], list)
    assert TrainConfig.from_dict(state["config"]) == micro_config(keep_checkpoints=2, steps=6)


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("model.safetensors", "truncate", "model.safetensors.*truncated or corrupted"),
        ("ema.safetensors", "flip", "ema.safetensors.*truncated or corrupted"),
        ("optimizer.safetensors", "delete", "optimizer.safetensors is missing"),
        ("state.json", "truncate", "state.json.*not valid JSON"),
        ("state.json", "edit", "state.json.*does not match its own sha256"),
        ("state.json", "delete", "state.json is missing"),
    ],
)
def test_damaged_checkpoints_are_detected(trained_run, tmp_path, name, damage, message):
    out = copy_run(trained_run[0], tmp_path / "copy")
    f = find_checkpoint(out) / name
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) - 5
        f.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif damage == "edit":
        f.write_text(data.decode().replace('"step": 6', '"step": 7'))
    else:
        f.unlink()
    with pytest.raises(ValueError, match=message):
        load_checkpoint(out)
    with pytest.raises(ValueError, match=message):
        load_model(out)
    # A resumed run refuses it too, before touching anything.
    with pytest.raises(ValueError, match=message):
        Trainer(trained_run[1].config, out, resume=True, progress=False, log=lambda s: None)


def test_checkpoint_of_another_configuration_is_refused(trained_run, tmp_path):
    out = copy_run(trained_run[0], tmp_path / "copy")
    other = micro_config(
        keep_checkpoints=2, steps=6, lr=5e-4, unet={"base_channels": 12, "num_groups": 4}
    )
    with pytest.raises(ValueError, match=r"another configuration.*lr.*unet\.base_channels"):
        Trainer(other, out, resume=True, progress=False, log=lambda s: None)
    # Without config.json the checkpoint's own config is compared.
    (out / "config.json").unlink()
    with pytest.raises(ValueError, match=r"another configuration.*lr"):
        Trainer(other, out, resume=True, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match=r"differing keys: lr: 0\.001 there, 0\.0005 now"):
        check_same_config(
            trained_run[1].config, micro_config(keep_checkpoints=2, lr=5e-4), where="x"
        )
    # Keys a resumed run may change (steps, intervals, keep) are not differences.
    check_same_config(trained_run[1].config, micro_config(steps=100, keep_checkpoints=9), where="x")


def test_no_pickle_anywhere():
    import refdiff.training.checkpoint as ck
    import refdiff.training.trainer as tr

    for mod in (ck, tr):
        src = Path(mod.__file__).read_text()
        assert "torch.load(" not in src and "import pickle" not in src


def test_resume_continues_bit_for_bit(tmp_path):
    """N steps straight == N/2 steps, a checkpoint, a new process-state, N/2 more: losses and
    weights equal bit for bit (dropout, flips, importance-sampled timesteps all in play)."""
    torch.use_deterministic_algorithms(True)
    try:
        cfg = micro_config(
            steps=8,
            checkpoint_every=4,
            flip=True,
            timestep_sampler="loss_second_moment",
            diffusion={"schedule": {"name": "cosine", "T": 4}},
            unet={"dropout": 0.1},
            warmup_steps=3,
        )
        a, _ = run(cfg, tmp_path / "straight")
        half = cfg.replace(steps=4)
        run(half, tmp_path / "resumed")
        torch.manual_seed(12345)  # disturb the global generator: the checkpoint must not care
        b, summary = run(cfg, tmp_path / "resumed", resume=True)
        assert summary["start_step"] == 4 and b.state.step == 8
        assert b.state.sampler.warmed_up  # the importance sampler's state made it through

        def losses(out: Path) -> list[float]:
            lines = (out / "metrics.jsonl").read_text().splitlines()
            return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

        assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
        assert len(losses(tmp_path / "straight")) == 8
        for (n1, p1), (n2, p2) in zip(
            a.state.model.state_dict().items(), b.state.model.state_dict().items(), strict=True
        ):
            assert n1 == n2 and torch.equal(p1, p2), n1
        for p1, p2 in zip(a.state.ema.parameters(), b.state.ema.parameters(), strict=True):
            assert torch.equal(p1, p2)
    finally:
        torch.use_deterministic_algorithms(False)


def test_first_logged_loss_after_a_crash_and_resume_matches_an_uninterrupted_run(tmp_path):
    """The losses since the last metrics line ride in the checkpoint: after a crash and a resume
    the next line averages the same steps as the uninterrupted run's line."""
    cfg = micro_config(steps=6, log_every=3, checkpoint_every=2)
    run(cfg, tmp_path / "straight")

    original = TrainState.train_step

    def crash_at_step_5(self):
        if self.step == 4:
            raise RuntimeError("simulated crash")
        return original(self)

    TrainState.train_step = crash_at_step_5
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(cfg, tmp_path / "crashed")
    finally:
        TrainState.train_step = original
    run(cfg, tmp_path / "crashed", resume=True)

    def lines(out: Path) -> list[tuple[int, float]]:
        text = (out / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, text) if "loss" in r]

    assert lines(tmp_path / "crashed") == lines(tmp_path / "straight")
    assert [s for s, _ in lines(tmp_path / "straight")] == [3, 6]


def test_checkpoint_comes_before_the_evaluation_and_the_samples(tmp_path):
    """A crash in the end-of-run evaluation or sampling loses no steps."""
    from refdiff.training.trainer import Trainer as T

    cfg = micro_config(steps=3, checkpoint_every=0, eval_every=0, sample_every=0)
    original = T.evaluate

    def broken(self):
        raise RuntimeError("evaluation crashed")

    T.evaluate = broken
    try:
        with pytest.raises(RuntimeError, match="evaluation crashed"):
            run(cfg, tmp_path / "run")
    finally:
        T.evaluate = original
    assert [c.name for c in RunFolder(tmp_path / "run").checkpoints()] == ["ckpt-00000003"]


def test_resume_needs_an_existing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing to resume: .*TYPO' holds no run"):
        run(micro_config(), tmp_path / "TYPO", resume=True)
    assert not (tmp_path / "TYPO").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_checkpoint_folders_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _, summary = run(micro_config(steps=2, checkpoint_every=0), tmp_path / "run")
    finally:
        os.umask(old)
    ckpt = Path(summary["checkpoint"])
    assert ckpt.stat().st_mode & 0o777 == mode
    for f in ckpt.iterdir():
        assert f.stat().st_mode & 0o777 == mode & 0o666, f
