"""Data-parallel training: 2 CPU processes under torchrun (gloo) against one process.

The gradients after one step on a global batch split over two processes must equal the gradients
of one process on the whole batch (DDP averages the per-process means, and the noise of global
example j at step s does not depend on the world size), and a short distributed run writes its
files from rank 0 only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from refdiff.runs.train_config import resolve_config  # noqa: E402
from refdiff.training.trainer import Trainer  # noqa: E402

CONFIG = {
    "recipe": "none",
    "unet": {
        "preset": "tiny",
        "base_channels": 8,
        "num_groups": 4,
        "num_res_blocks": 1,
        "dropout": 0.0,  # dropout masks are drawn per process: off for an exact comparison
    },
    "diffusion": {"schedule": {"name": "cosine", "T": 6}},
    "timestep_sampler": "loss_second_moment",
    "batch_size": 8,
    "steps": 2,
    "log_every": 1,
    "eval_examples": 6,  # uneven over 2 processes on purpose
    "num_samples": 4,
    "seed": 3,
}

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from refdiff.runs.train_config import resolve_config
    from refdiff.training.trainer import Trainer

    torch.set_num_threads(1)
    config_file, out, grads_file, summary_file = sys.argv[1:5]
    cfg = resolve_config(config_file)
    trainer = Trainer(cfg, out, device="cpu", progress=False)
    assert trainer.ctx.world_size == 2 and trainer.ctx.backend == "gloo"
    loss, t, per_example = trainer.state.forward_backward()
    grads = {n: p.grad.contiguous() for n, p in trainer.state.model.named_parameters()}
    if trainer.ctx.rank == 0:
        save_file(grads, grads_file)
    summary = trainer.train()
    if trainer.ctx.rank == 0:
        summary["sampler"] = trainer.state.sampler.state_dict()
        with open(summary_file, "w") as f:
            json.dump(summary, f)
    trainer.close()
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "config.json").write_text(json.dumps(CONFIG))
    (tmp / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(tmp / "worker.py"),
        str(tmp / "config.json"),
        str(tmp / "run"),
        str(tmp / "grads.safetensors"),
        str(tmp / "summary.json"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(
            f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return tmp


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("single") / "run"
        trainer = Trainer(
            resolve_config(None, CONFIG), out, device="cpu", progress=False, log=lambda s: None
        )
        assert trainer.ctx.world_size == 1
        trainer.state.forward_backward()
        grads = {n: p.grad.clone() for n, p in trainer.state.model.named_parameters()}
        summary = trainer.train()
        return grads, summary, trainer
    finally:
        torch.set_num_threads(threads)


def test_gradients_equal_single_process_training(two_process_run, one_process):
    ddp = safetensors_torch.load_file(str(two_process_run / "grads.safetensors"))
    single, _, _ = one_process
    assert set(ddp) == set(single)
    num = sum(float((ddp[n] - single[n]).double().norm() ** 2) for n in single) ** 0.5
    den = sum(float(single[n].double().norm() ** 2) for n in single) ** 0.5
    assert den > 0
    assert num / den < 1e-6  # float32 rounding of a differently ordered sum, nothing more
    for n in single:
        torch.testing.assert_close(ddp[n], single[n], rtol=1e-5, atol=1e-7 * den)


def test_distributed_run_matches_and_rank_zero_writes(two_process_run, one_process):
    _, single_summary, trainer = one_process
    summary = json.loads((two_process_run / "summary.json").read_text())
    assert summary["step"] == 2
    # The importance sampler saw the same global batches in the same order on every process.
    state = summary["sampler"]
    assert state["counts"] == trainer.state.sampler.state_dict()["counts"]
    # Held-out bits/dim: the same images and noise, sharded over 2 processes.
    assert summary["eval_bpd"] == pytest.approx(single_summary["eval_bpd"], rel=1e-4)
    run = two_process_run / "run"
    assert (run / "config.json").is_file() and (run / "checkpoints" / "ckpt-00000002").is_dir()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 2]  # written once, not per rank
