"""Sampling and scoring at scale: shards that find themselves in the launcher's environment and
join into one result, equal to one process's run bit for bit; shard sets that come from different
runs, overlap or miss some indices are refused with a message that names the problem.

The multi-process tests start 2 processes under torchrun and 4 under a Slurm-like environment set
by the test, each running ``refdiff sample --shard auto`` or ``refdiff eval --shard auto``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_model import shared_export

from refdiff.runtime.sampling import (
    LAUNCHERS,
    SLURM_ARRAY,
    parse_shard,
    shard_from_environment,
    shard_range,
)
from refdiff.runtime.shards import (
    ShardRecord,
    check_shards,
    format_ranges,
    join_sample_files,
    launcher_device,
    shard_glob,
    shard_path,
    shard_tag,
)

#: Every variable ``--shard auto`` reads: cleared for each test and each child process.
LAUNCHER_VARS = (
    *(v for _, r, s in LAUNCHERS for v in (r, s)),
    *SLURM_ARRAY,
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "LOCAL_RANK",
)


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    for v in LAUNCHER_VARS:
        monkeypatch.delenv(v, raising=False)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return shared_export(tmp_path_factory)


def _main(argv: list[str]) -> int:
    from refdiff.cli import main

    return main(argv)


# ---- the shard from the launcher's environment ------------------------------------------------


@pytest.mark.parametrize(
    ("env", "shard"),
    [
        ({"RANK": "3", "WORLD_SIZE": "4"}, (3, 4)),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (1, 2)),
        ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "3"}, (0, 3)),
        ({"PMI_RANK": "2", "PMI_SIZE": "5"}, (2, 5)),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}, (5, 8)),
        # --array=1-8: ids from 1; --array=0-14:2: every other id
        (
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
            | {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"},
            (0, 8),
        ),
        (
            {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "8"}
            | {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "14"}
            | {"SLURM_ARRAY_TASK_STEP": "2"},
            (3, 8),
        ),
        # torchrun under srun (one per node): torchrun's global RANK wins over the node's PROCID
        ({"RANK": "5", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (5, 8)),
        # a batch script without --ntasks has SLURM_PROCID=0 alone: no split from it
        ({"SLURM_PROCID": "0", "RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
        # task 2 of a 4-task array, each task a torchrun job of 2 processes: 8 shards
        (
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
            | {"RANK": "1", "WORLD_SIZE": "2"},
            (5, 8),
        ),
    ],
)
def test_the_shard_comes_from_the_launchers_variables(env, shard):
    k, n, where = shard_from_environment(env)
    assert (k, n) == shard
    assert where  # says which variables it read


def test_the_source_of_the_shard_is_named():
    env = {"RANK": "5", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    assert shard_from_environment(env)[2] == "RANK=5, WORLD_SIZE=8 (torchrun)"
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert shard_from_environment(env)[2] == (
        "SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=4 (array from 1, step 1)"
    )


def test_array_tasks_times_processes_cover_every_shard_once():
    got = sorted(
        shard_from_environment(
            {
                "SLURM_ARRAY_TASK_ID": str(a),
                "SLURM_ARRAY_TASK_COUNT": "3",
                "RANK": str(r),
                "WORLD_SIZE": "4",
            }
        )[:2]
        for a in range(3)
        for r in range(4)
    )
    assert got == [(k, 12) for k in range(12)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, r"no launcher in the environment; expected SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_"),
        ({}, r"RANK/WORLD_SIZE \(torchrun\), SLURM_PROCID/SLURM_NTASKS \(srun\)"),
        ({"RANK": "1"}, "RANK is set .'1'. but WORLD_SIZE is not"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set .'2'. but RANK is not"),
        ({"SLURM_PROCID": "3"}, "SLURM_PROCID is set .'3'. but SLURM_NTASKS is not"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be >= 1"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1' must be >= 0"),
        ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_ID is set .'3'. but SLURM_ARRAY_TASK_CO"),
        (
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
            | {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "5"},
            r"not evenly spaced \(min 1, max 5, step 1, 3 tasks\): use --array=0-2",
        ),
        (
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},
            "SLURM_ARRAY_TASK_ID=4 is not one of the 4 tasks",
        ),
    ],
)
def test_shard_auto_errors_name_the_variables(env, message):
    with pytest.raises(ValueError, match=message):
        shard_from_environment(env)


def test_parse_shard_auto_reads_the_process_environment(monkeypatch):
    with pytest.raises(ValueError, match="no launcher in the environment"):
        parse_shard("auto")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("auto") == parse_shard(" AUTO ") == (1, 3)
    with pytest.raises(ValueError, match="or be 'auto'"):
        parse_shard("automatic")


def test_launcher_device_gives_each_torchrun_process_its_gpu():
    assert launcher_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert launcher_device("cuda", {}) == "cuda"
    assert launcher_device("cuda:1", {"LOCAL_RANK": "3"}) == "cuda:1"  # asked for by name
    assert launcher_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"
    with pytest.raises(ValueError, match="LOCAL_RANK='x' is not an integer"):
        launcher_device("cuda", {"LOCAL_RANK": "x"})


def test_shard_file_names_never_collide_and_sort_in_order(tmp_path):
    assert shard_tag((2, 8)) == "shard02of08" and shard_tag((7, 128)) == "shard007of128"
    assert shard_path("out/s.png", (2, 8)) == Path("out/s-shard02of08.png")
    assert shard_path("s-shard02of08.png", (2, 8)) == Path("s-shard02of08.png")  # kept
    assert shard_path("s.png", None) == Path("s.png")
    names = [shard_path("s.npz", (k, 12)).name for k in range(12)]
    assert len(set(names)) == 12 and sorted(names) == names
    assert shard_glob("a/s-shard02of08.npz", (2, 8)) == "a/s-shard*of08.npz"
    assert format_ranges(np.array([0, 1, 2, 5, 7, 8])) == "0..2, 5, 7..8"
    assert format_ranges(np.arange(0, 20, 2), limit=2) == "0, 2 and 8 more range(s)"


def test_check_shards_orders_and_names_what_is_wrong():
    ident = {"model": {"fingerprint": "a"}, "seed": 0}
    a = ShardRecord("a.npz", ident, np.array([4, 5]), (2, 3))
    b = ShardRecord("b.npz", ident, np.array([0, 1]), (0, 3))
    c = ShardRecord("c.npz", ident, np.array([2, 3]), (1, 3))
    order, missing = check_shards([a, b, c], 6)
    np.testing.assert_array_equal(np.array([4, 5, 0, 1, 2, 3])[order], np.arange(6))
    assert missing.size == 0
    with pytest.raises(ValueError, match=r"3 of 6 indices missing: 0..1, 4 \(shards 0/3, 2/3\)"):
        check_shards([ShardRecord("c", ident, np.array([2, 3, 5]), (1, 3))], 6)
    _, missing = check_shards([c], 6, allow_partial=True)
    assert missing.tolist() == [0, 1, 4, 5]
    other = ShardRecord("d.npz", {"model": {"fingerprint": "b"}, "seed": 0}, np.array([0]))
    with pytest.raises(ValueError, match=r"model.fingerprint differs: 'a.npz' has 'a', 'd.npz'"):
        check_shards([a, other], 6)
    with pytest.raises(ValueError, match=r"'b.npz' and 'c.npz' both hold indices 1 \(1 of them\)"):
        check_shards([b, ShardRecord("c.npz", ident, np.array([1, 2, 3]))], 6)
    with pytest.raises(ValueError, match=r"indices outside 0..5 \(6\)"):
        check_shards([ShardRecord("e.npz", ident, np.array([6]))], 6)


# ---- sampling ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(nproc: int, argv: list[str], cwd: Path) -> None:
    """``torchrun --nproc_per_node nproc -m refdiff.cli ARGV`` (gloo's rendezvous on localhost)."""
    pytest.importorskip("torch")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += ["-m", "refdiff.cli", *argv]
    proc = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _launch(envs: list[dict[str, str]], argv: list[str], cwd: Path) -> None:
    """One ``refdiff ARGV`` process per environment, all at once, as a launcher starts them."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "refdiff.cli", *argv],
            cwd=cwd,
            env={**_clean_env(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{argv} failed:\n{out[-2000:]}\n{err[-2000:]}"


SAMPLE = [
    "--num-samples",
    "10",
    "--sampler",
    "ddim",
    "--steps",
    "4",
    "--seed",
    "5",
    "--no-progress",
]


#: How the processes are started: torchrun with 2, or 4 with the variables a Slurm job array or
#: srun sets (about 9 s each on the 2-core machine, so they run in make test).
LAUNCHES = {
    "torchrun-2": pytest.param("torchrun", 2, id="torchrun-2"),
    "slurm-array-4": pytest.param("array", 4, id="slurm-array-4"),
    "srun-4": pytest.param("srun", 4, id="srun-4"),
}


def _run_shards(how: str, count: int, argv: list[str], cwd: Path) -> None:
    if how == "torchrun":
        _torchrun(count, argv, cwd)
        return
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    if how == "srun":
        names = ("SLURM_PROCID", "SLURM_NTASKS")
    _launch([{names[0]: str(k), names[1]: str(count)} for k in range(count)], argv, cwd)


@pytest.mark.parametrize(("how", "count"), [LAUNCHES["torchrun-2"], LAUNCHES["slurm-array-4"]])
def test_sample_shards_from_a_launcher_join_to_one_run(tiny_onnx, tmp_path, how, count):
    model = str(tiny_onnx)
    assert _main(["sample", model, *SAMPLE, "--out", str(tmp_path / "one.png")]) == 0
    one = np.load(tmp_path / "one.npz")
    argv = ["sample", model, *SAMPLE, "--batch-size", "3", "--shard", "auto"]
    _run_shards(how, count, argv, tmp_path)
    files = sorted(tmp_path.glob("samples-shard*.npz"))
    assert [f.name for f in files] == [
        f"samples-shard{k:02d}of{count:02d}.npz" for k in range(count)
    ]
    assert len(list(tmp_path.glob("samples-shard*.png"))) == count
    joined = join_sample_files(list(reversed(files)))  # any order: joined by index
    np.testing.assert_array_equal(joined.images, one["images"])
    assert joined.indices.tolist() == list(range(10)) and joined.missing.size == 0
    # what each file records
    last = np.load(files[-1])
    assert last["shard"].tolist() == [count - 1, count]
    assert last["indices"].tolist() == list(range(*shard_range(10, (count - 1, count))))
    assert str(last["model_fingerprint"]) == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert (str(last["sampler"]), int(last["steps"]), str(last["spacing"])) == ("ddim", 4, "even")
    assert json.loads(str(last["options"])) == {"eta": 0.0}
    assert (int(last["seed"]), int(last["n"])) == (5, 10)
    # The sample-quality figures of the joined shards are those of the one file.
    reports = {}
    for name, pattern in (("one", "one.npz"), ("shards", "samples-shard*.npz")):
        out = tmp_path / f"{name}.json"
        argv = ["eval", model, "--samples", str(tmp_path / pattern), "--no-full", "--mc-draws"]
        assert _main([*argv, "0", "--out", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["one"]["bits_per_dim"] is None  # the samples alone
    assert reports["shards"]["sample_quality"] == reports["one"]["sample_quality"]
    described = reports["shards"]["samples"]
    assert (described["num_samples"], described["n"], described["missing"]) == (10, 10, 0)


def _sample_files(model: str, tmp_path: Path) -> Path:
    """Shard files of one run (n=6, 3 shards) and of runs that differ from it in one thing."""
    base = ["--n", "6", "--sampler", "ddim", "--steps", "3", "--no-progress"]
    for k in range(3):
        assert (
            _main(["sample", model, *base, "--shard", f"{k}/3", "--out", str(tmp_path / "s.png")])
            == 0
        )
    variants = {
        "seed": ["--seed", "1"],
        "sampler": ["--sampler", "dpmpp_2m"],
        "steps": ["--steps", "4"],
        "spacing": ["--spacing", "logsnr"],
        "options": ["--eta", "0.5"],
        "n": ["--n", "7"],
    }
    for name, change in variants.items():
        argv = [
            "sample",
            model,
            *base,
            *change,
            "--shard",
            "1/3",
            "--out",
            str(tmp_path / f"{name}.png"),
        ]
        assert _main(argv) == 0
    return tmp_path


def test_sample_sets_from_other_runs_overlapping_or_incomplete_are_refused(
    tiny_onnx, tmp_path, capsys
):
    folder = _sample_files(str(tiny_onnx), tmp_path)
    s = [str(folder / f"s-shard{k:02d}of03.npz") for k in range(3)]
    for key in ("seed", "sampler", "steps", "spacing", "options", "n"):
        other = str(folder / f"{key}-shard01of03.npz")
        with pytest.raises(
            ValueError,
            match=rf"cannot join sample files of different runs: {key} differs: .*{key}-shard01of03",
        ):
            join_sample_files([s[0], other, s[2]])
    # another model: the recorded fingerprint differs
    data = dict(np.load(s[1]))
    data["model_fingerprint"] = np.asarray("0" * 64)
    np.savez(folder / "other-model.npz", **data)
    with pytest.raises(ValueError, match=r"model.fingerprint differs"):
        join_sample_files([s[0], str(folder / "other-model.npz"), s[2]])
    with pytest.raises(
        ValueError, match=r"overlapping indices: .*s-shard01of03.npz' and .*both hold indices 2..3"
    ):
        join_sample_files(
            [*s, str(folder / "s-shard01of03.npz")]
        )  # the same file twice counts once below
    with pytest.raises(
        ValueError, match=r"incomplete sample files: 2 of 6 indices missing: 2..3 \(shard 1/3\)"
    ):
        join_sample_files([s[0], s[2]])
    partial = join_sample_files([s[2], s[0]], allow_partial=True)
    assert partial.indices.tolist() == [0, 1, 4, 5] and partial.missing.tolist() == [2, 3]
    # A file without a record joins nothing, but is scored alone as before.
    np.savez(folder / "plain.npz", images=np.load(s[0])["images"])
    with pytest.raises(ValueError, match=r"plain.npz' with other sample files: it does not record"):
        join_sample_files([str(folder / "plain.npz"), s[1]])
    assert join_sample_files([str(folder / "plain.npz")]).images.shape[0] == 2
    # The command: the same refusals, one line each, and --allow-partial says what is missing.
    capsys.readouterr()
    model, common = str(tiny_onnx), ["--no-full", "--mc-draws", "0", "--no-progress"]
    assert _main(["eval", model, "--samples", s[0], s[2], *common]) == 1
    assert "pass --allow-partial" in capsys.readouterr().err
    out = folder / "partial.json"
    argv = ["eval", model, "--samples", s[0], s[2], *common, "--allow-partial", "--out", str(out)]
    assert _main(argv) == 0
    assert "2 of 6 missing (2..3)" in capsys.readouterr().err
    report = json.loads(out.read_text())["samples"]
    assert (report["num_samples"], report["missing"], report["missing_indices"]) == (4, 2, "2..3")
    assert _main(["eval", model, "--samples", str(folder / "nothing*.npz"), *common]) == 1
    assert "no sample file matches" in capsys.readouterr().err
    # the same file named twice (by a glob and by name) is read once
    assert _main(["eval", model, "--samples", str(folder / "s-shard*.npz"), s[0], *common]) == 0


def test_without_samples_no_full_and_no_draws_is_still_nothing_to_evaluate(tiny_onnx, capsys):
    assert _main(["eval", str(tiny_onnx), "--no-full", "--mc-draws", "0"]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err


# ---- the bound -----------------------------------------------------------------------------


def test_score_images_over_shards_is_the_whole_evaluation_bit_for_bit(tiny_onnx):
    from refdiff.data import load_digits
    from refdiff.evaluation import evaluate
    from refdiff.evaluation.evaluate import score_images
    from refdiff.evaluation.shards import ImageScores
    from refdiff.models import open_model

    m = open_model(tiny_onnx)
    held, train = load_digits("test").images[:11], load_digits("train").images
    kw = {"train_uint8": train, "num_draws": 2, "seed": 3, "progress": False}
    whole = evaluate(m.denoiser, m.diffusion, held, batch_size=4, **kw)
    for count, batch in ((2, 3), (3, 11)):
        parts = [
            score_images(m.denoiser, m.diffusion, held, shard=(k, count), batch_size=batch, **kw)
            for k in range(count)
        ]
        assert [p.indices.tolist() for p in parts] == [
            list(range(*shard_range(11, (k, count)))) for k in range(count)
        ]
        joined = ImageScores.concat(parts).report()
        for key in ("bits_per_dim", "baseline"):
            got = {k: v for k, v in joined[key].items() if not k.startswith("seconds")}
            want = {k: v for k, v in whole[key].items() if not k.startswith("seconds")}
            assert json.dumps(got, default=np.ndarray.tolist) == json.dumps(
                want, default=np.ndarray.tolist
            )


EVAL = ["--data", "digits", "--n-images", "12", "--mc-draws", "2", "--seed", "4", "--no-progress"]


def _figures(report: dict) -> str:
    """The report's figures (bits/dim and baseline, not the seconds), as exact JSON."""
    keep = {
        key: {k: v for k, v in report[key].items() if not k.startswith("seconds")}
        for key in ("bits_per_dim", "baseline")
    }
    return json.dumps(keep, sort_keys=True)


@pytest.mark.parametrize(("how", "count"), [LAUNCHES["torchrun-2"], LAUNCHES["srun-4"]])
def test_bound_shards_from_a_launcher_merge_to_one_run(tiny_onnx, tmp_path, how, count):
    model = str(tiny_onnx)
    assert _main(["eval", model, *EVAL, "--out", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    argv = ["eval", model, *EVAL, "--batch-size", "2", "--shard", "auto", "--out", "parts/e.npz"]
    _run_shards(how, count, argv, tmp_path)
    files = sorted((tmp_path / "parts").glob("e-shard*.npz"))
    assert [f.name for f in files] == [f"e-shard{k:02d}of{count:02d}.npz" for k in range(count)]
    out, plot = tmp_path / "merged.json", tmp_path / "terms.png"
    glob = str(tmp_path / "parts" / "e-shard*.npz")
    assert _main(["eval", "--merge", glob, "--out", str(out), "--plot-terms", str(plot)]) == 0
    merged = json.loads(out.read_text())
    assert _figures(merged) == _figures(one)  # bit for bit: JSON floats round-trip exactly
    assert merged["data"]["num_images"] == 12 and merged["merged"]["missing"] == 0
    assert merged["model"]["fingerprint"] == one["model"]["fingerprint"]
    assert len(merged["bits_per_dim"]["terms_bpd"]) == 50 and plot.stat().st_size > 0
    # the per-image terms are in the parts, not only their means
    from refdiff.evaluation.shards import read_partial

    part = read_partial(files[1])
    start, stop = shard_range(12, (1, count))
    assert part.shard == (1, count) and part.scores.indices.tolist() == list(range(start, stop))
    assert part.scores.bound.terms.shape == (stop - start, 50)
    assert part.scores.bound.total.shape == (stop - start,)
    assert part.identity["method"]["seed"] == 4 and part.identity["num_images"] == 12


def _parts(model: str, tmp_path: Path) -> dict[str, list[str]]:
    """Partial evaluations of one run (2 shards of 6 images) and of runs differing in one thing."""
    base = ["--data", "digits", "--n-images", "6", "--mc-draws", "2", "--no-progress"]
    runs = {
        "base": [],
        "seed": ["--seed", "1"],
        "draws": ["--mc-draws", "3"],
        "no-full": ["--no-full"],
        "images": ["--n-images", "8"],
        "split": ["--split", "train"],
    }
    files = {}
    for name, change in runs.items():
        files[name] = []
        for k in range(2) if name == "base" else [1]:  # the others: their shard 1 only
            out = tmp_path / name / "e.npz"
            argv = ["eval", model, *base, *change, "--shard", f"{k}/2", "--out", str(out)]
            assert _main(argv) == 0
            files[name].append(str(tmp_path / name / f"e-shard{k:02d}of02.npz"))
    return files


def test_partial_evaluations_from_other_runs_overlapping_or_incomplete_are_refused(
    tiny_onnx, tmp_path, capsys
):
    from refdiff.evaluation.shards import merge_partials

    files = _parts(str(tiny_onnx), tmp_path)
    base = files["base"]
    for name, key in (
        ("seed", "method.seed"),
        ("draws", "method.num_draws"),
        ("no-full", "method.full"),
        ("images", "data.num_images"),
        ("split", "data.name"),
    ):
        with pytest.raises(
            ValueError, match=rf"of different runs: {key} differs: .*{name}/e-shard01"
        ):
            merge_partials([base[0], files[name][0]])
    # another model: its fingerprint (here: the same file's fingerprint changed in the record)
    from refdiff.evaluation.shards import read_partial, save_partial

    p = read_partial(base[1])
    ident = {k: v for k, v in p.identity.items() if k not in ("num_images", "method")}
    ident["model"] = {**ident["model"], "fingerprint": "0" * 64}
    other = tmp_path / "other.npz"
    save_partial(other, p.scores, shard=p.shard, num_images=6, identity=ident, about=p.about)
    with pytest.raises(ValueError, match=r"model.fingerprint differs"):
        merge_partials([base[0], str(other)])
    with pytest.raises(
        ValueError,
        match=r"incomplete partial evaluations: 3 of 6 indices missing: 3..5 \(shard 1/2\)",
    ):
        merge_partials([base[0]])
    capsys.readouterr()
    # the command: the same messages, and --allow-partial states the missing images
    assert _main(["eval", "--merge", base[0]]) == 1
    assert "pass --allow-partial" in capsys.readouterr().err
    out = tmp_path / "partial.json"
    assert _main(["eval", "--merge", base[0], "--allow-partial", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "PARTIAL: 3 of the run's 6 images missing (3..5)" in captured.out
    report = json.loads(out.read_text())
    assert report["merged"]["missing_indices"] == "3..5" and report["data"]["num_images"] == 3
    # overlapping: a shard of a 3-way split of the same run overlaps both halves
    out3 = tmp_path / "three" / "e.npz"
    argv = ["eval", str(tiny_onnx), "--data", "digits", "--n-images", "6", "--mc-draws", "2"]
    assert _main([*argv, "--no-progress", "--shard", "1/3", "--out", str(out3)]) == 0
    with pytest.raises(
        ValueError,
        match=r"overlapping indices: .*base/e-shard00of02.npz' and .*e-shard01of03.npz' both hold indices 2",
    ):
        merge_partials([*base, str(tmp_path / "three" / "e-shard01of03.npz")])
    # not a partial evaluation at all
    np.savez(tmp_path / "samples.npz", images=np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(
        ValueError, match="is not a partial evaluation written by `refdiff eval --shard`"
    ):
        merge_partials([str(tmp_path / "samples.npz")])
    # MODEL given to --merge must be the parts' model
    assert _main(["eval", str(tiny_onnx), "--merge", *base]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard", "0/2"], "give --out PART.npz"),
        (["--shard", "0/2", "--out", "r.json"], "give --out PART.npz"),
        (["--shard", "0/2", "--out", "p.npz", "--samples", "s.npz"], "score --samples in a run"),
        (["--shard", "0/2", "--out", "p.npz", "--plot-terms", "t.png"], "plot the terms"),
        (["--merge", "p.npz", "--shard", "0/2"], "--merge and --shard do not go together"),
        (["--merge", "p.npz", "--samples", "s.npz"], "--merge joins the bound's partial results"),
        (["--shard", "0/20", "--out", "p.npz", "--n-images", "12"], "cannot split n = 12 images"),
    ],
)
def test_shard_and_merge_options_that_do_not_go_together(
    tiny_onnx, tmp_path, argv, message, capsys
):
    os.chdir(tmp_path)
    assert _main(["eval", str(tiny_onnx), *argv, "--no-progress"]) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_eval_without_model_needs_merge(capsys):
    assert _main(["eval", "--data", "digits"]) == 1
    assert "MODEL is missing" in capsys.readouterr().err
