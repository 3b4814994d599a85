"""Failures a user would fear: a full disk, a read-only folder, a kill -9 while writing, a
missing extra. Every file appears whole or not at all; every error is one line naming the path
and the cause, with a non-zero exit; a command that fails before it produces anything creates
nothing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refdiff.cli import main

pytest.importorskip("onnxruntime")

from blocking import blocker
from tiny_model import shared_export


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(shared_export(tmp_path_factory))


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".refdiff-tmp-*"))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_sample_on_a_full_disk_is_one_line_and_leaves_no_file(model, tmp_path, capsys, monkeypatch):
    """`refdiff sample` on a full disk once left a truncated .npz next to a complete PNG."""

    def half_written(path, **arrays):  # writes part of the archive, then the disk is full
        Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 100)
        _disk_full()

    monkeypatch.setattr(np, "savez", half_written)
    out = tmp_path / "out" / "s.png"
    code = main(["sample", model, "--n", "3", "--steps", "2", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.splitlines() == [
        f"refdiff sample: error: cannot write {str(out.with_suffix('.npz'))!r}: "
        "No space left on device"
    ]
    assert not out.exists() and not out.with_suffix(".npz").exists()
    assert _no_leftovers(tmp_path) == []


def test_export_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    import onnx

    from refdiff.runs import resolve_config
    from refdiff.training.trainer import train

    run = tmp_path / "run"
    config = resolve_config(
        None,
        {
            "recipe": "none",
            "unet": {"preset": "tiny", "base_channels": 8, "num_groups": 4, "num_res_blocks": 1},
            "diffusion": {"schedule": {"name": "cosine", "T": 8}},
            "batch_size": 8,
            "steps": 1,
            "eval_examples": 8,
            "num_samples": 2,
        },
    )
    train(config, run, device="cpu", progress=False)
    monkeypatch.setattr(onnx, "save_model", _disk_full)
    out = tmp_path / "m.onnx"
    code = main(["export", str(run), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.splitlines() == [
        f"refdiff export: error: cannot write {str(out)!r}: No space left on device"
    ]
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_train_on_a_full_disk_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """`refdiff train --out` on a full disk gave a clean error but left an empty run folder."""
    pytest.importorskip("torch")
    monkeypatch.setattr(os, "fsync", _disk_full)  # where a full disk shows up at the latest
    out = tmp_path / "runs" / "t"
    small = ["--steps", "1", "--base-channels", "8", "--num-groups", "4", "--no-progress"]
    code = main(["train", "--data", "digits", "--out", str(out), *small])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_first_write_removes_only_the_folders_it_created(tmp_path):
    from refdiff._io import created_folder

    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError), created_folder(tmp_path / "kept" / "a" / "b"):
        raise OSError(errno.ENOSPC, "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []
    with pytest.raises(OSError), created_folder(tmp_path / "kept" / "a") as folder:
        (folder / "other").write_text("a file another writer put there")
        raise OSError(errno.ENOSPC, "full")
    assert (tmp_path / "kept" / "a" / "other").is_file()  # not empty: left alone
    with created_folder(tmp_path / "new") as folder:
        (folder / "x").write_text("ok")
    assert (tmp_path / "new" / "x").is_file()


@pytest.mark.parametrize(
    "where",
    [
        "file",
        pytest.param(
            "sys", marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no /sys")
        ),
    ],
)
def test_eval_checks_its_outputs_before_the_evaluation(model, tmp_path, capsys, monkeypatch, where):
    """`refdiff eval --out` on a read-only folder failed only after the whole evaluation."""
    import refdiff.evaluation as ev

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output was checked")

    monkeypatch.setattr(ev, "evaluate", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = {"file": blocker / "r.json", "sys": Path("/sys/kernel/refdiff/r.json")}[where]
    for flags in (["--out", str(bad)], ["--plot-terms", str(bad.with_suffix(".png"))]):
        code = main(["eval", model, "--no-progress", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and str(bad.parent) in err[0], err


def test_a_command_that_fails_before_producing_anything_creates_nothing(tmp_path, capsys):
    """`refdiff sample --out /new/dir/s.png` on a bad model left /new/dir behind."""
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not an onnx file")
    out = tmp_path / "new" / "dir" / "s.png"
    assert main(["sample", str(bad_model), "--out", str(out), "--no-progress"]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]
    assert main(["eval", str(bad_model), "--out", str(tmp_path / "x" / "r.json")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


# ---- kill -9 while writing --------------------------------------------------------------------

SLOW_WRITES = textwrap.dedent(
    """
    import io, sys, time
    import numpy as np
    from PIL import Image

    def slowly(write_to_buffer):
        def write(target, *args, **kwargs):
            buf = io.BytesIO()
            write_to_buffer(buf, *args, **kwargs)
            data = buf.getvalue()
            print("writing", flush=True)
            with open(target, "wb") as f:
                for i in range(0, len(data), 512):
                    f.write(data[i : i + 512])
                    f.flush()
                    time.sleep(0.004)
        return write

    real_savez, real_save = np.savez, Image.Image.save
    np.savez = slowly(lambda buf, **arrays: real_savez(buf, **arrays))
    Image.Image.save = lambda self, fp, *a, **k: slowly(lambda buf: real_save(self, buf, *a, **k))(fp)
    from refdiff.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _complete(png: Path, npz: Path, n: int) -> None:
    """Each of the two files is absent or whole."""
    if npz.exists():
        with np.load(npz) as f:
            assert f["images"].shape == (n, 1, 8, 8)
    if png.exists():
        with Image.open(png) as im:
            im.load()


def test_kill_during_the_writes_leaves_each_file_whole_or_absent(model, tmp_path):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    argv = ["sample", model, "--n", "400", "--steps", "1", "--out", str(png), "--no-progress"]
    outcomes = set()
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6, 1.2):
        for f in (png, npz):
            f.unlink(missing_ok=True)
        with subprocess.Popen(
            [sys.executable, "-c", SLOW_WRITES, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as child:
            for line in child.stdout:  # the command reports what it does, then writes
                if line.strip() == "writing":
                    break
            else:
                raise AssertionError("the child never started writing")
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        _complete(png, npz, 400)
        outcomes.add((npz.exists(), png.exists()))
    # the kills landed while the .npz was written and while the PNG was written
    assert (False, False) in outcomes and (True, False) in outcomes, outcomes


def test_missing_torch_names_the_extra(tmp_path):
    """Without torch, `train`, `export`, `check` and `demo` said only "No module named 'torch'"."""
    main_code = "import sys\nfrom refdiff.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    (tmp_path / "m.onnx").write_bytes(b"x")
    for argv in (
        ["train", "--out", str(tmp_path / "r"), "--steps", "1"],
        ["export", str(tmp_path), "--out", str(tmp_path / "m2.onnx")],
        ["check", str(tmp_path / "m.onnx"), str(tmp_path)],
        ["demo", "--out", str(tmp_path / "d")],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", blocker(["torch"]) + main_code, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (argv, proc.stderr)
        assert len(lines) == 1 and 'pip install "refdiff[torch]"' in lines[0], (argv, lines)
