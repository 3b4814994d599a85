"""Every Python and shell snippet of README.md and docs/*.md runs, as written, in order.

Each Markdown file is one test: its code blocks run top to bottom in a fresh folder made from
``docs_files`` (a small run folder as ``runs/digits`` and ``runs/digits3k``, its export as
``model.onnx`` and ``runs/demo/model.onnx`` and that file's int8 variant, a tiny diffusers
pipeline as ``ddpm-cifar10`` with ``images.npz``), Python blocks in one namespace per file, so a later block may use what an earlier
one defined. A moved attribute or a renamed flag fails here, with the file and line.

How a block runs, by its tag:

- ``python``: executed. ``refdiff.export.export_onnx`` is replaced by a cache that exports each
  distinct model (its weights, settings, precision) once per session and copies the file for the
  next call with the same model, fixing the metadata's ``weights``: an export costs 5 to 30 s
  whatever the model's size, the exporter itself is tested in test_export.py, and what a snippet
  can get wrong (the names, the arguments, what it does with the file) still runs.
- ``bash``: command by command (``\\`` continues a line, ``#`` starts a comment, ``$RANK`` is 0 and
  ``$WORLD`` 4). ``refdiff ...`` runs in this process, and must exit 0, unless it is *long*, in
  which case its command line is parsed by refdiff's own parser (``--shard auto`` as in one
  torchrun process), so that a renamed flag still fails: ``train`` (minutes to hours;
  ``--print-config`` runs), ``demo`` (about 6.5 minutes), ``--device cuda`` (no GPU here),
  ``sample`` of more than 1000 samples (minutes on a CPU), ``eval --n-images 0`` (the full bound
  of a whole split: minutes to hours). A usage synopsis (``refdiff export CHECKPOINT [--fp16]``:
  a token in brackets or in capitals) has each of its flags looked up. A command that stops
  because it needs an extra this environment lacks (exit 2, ``... is not installed: pip install
  "refdiff[X]"``) counts as parsed.
  ``torchrun ... -m refdiff.cli ARGS`` parses ARGS; ``make TARGET`` finds the target and parses the
  refdiff command of its recipe; ``pip install 'refdiff[X]'`` finds the extras in pyproject.toml
  (nothing is installed); ``python benchmarks/X.py`` and ``python -m pytest tests/X.py`` find their
  files (benchmarks take minutes; the tests run in ``make test`` anyway), ``python -c CODE``
  and ``python -m refdiff...`` run; ``grep`` runs in the repository. Any other command fails until it has a rule here.
- ``js``: syntax-checked as an ES module by ``node --check`` (where Node.js is installed; the
  JavaScript examples themselves run in tests/test_examples_js.py).
- ``json``: parsed (and read as refdiff ONNX metadata where it looks like it); ``toml``: parsed,
  written to the file its first comment names (``# my_run.toml ...``) and resolved as a training
  configuration; ``text``: output, not run. A block without a tag fails: tag it. MyST
  directives (```` ```{include} ````) are not code.

A block right after ``<!-- not run by tests/test_docs.py: REASON -->`` is only parsed (each
command as above, Python compiled; other programs, a cluster's ``sbatch`` or ``mkdir``, are left
alone, but a refdiff command they wrap is parsed): for what the rules above cannot tell is long
or needs other machines. Python
blocks of the files in ``PENDING`` are only compiled, with the reason given there. With
``DOCS_TIMES=FILE`` in the environment each block's seconds are appended to FILE.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("diffusers")

import refdiff.export  # noqa: E402
from tiny_model import save_tiny_run, shared_export, tiny_diffusion, tiny_model  # noqa: E402

from refdiff.cli import build_parser, main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]

#: Files whose Python blocks are being rewritten elsewhere: compiled, not run, until they land.
PENDING: dict[str, str] = {}
#: Seconds a block may take before the test asks for it to be marked (the whole test takes
#: about a minute on an idle 2-core machine).
BLOCK_SECONDS = 120
#: More samples than this make `refdiff sample` a long command.
MAX_SAMPLES = 1000

FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")
#: A token that stands for a value the reader supplies (CHECKPOINT, MODEL.onnx, FILE): a command
#: holding one is a usage synopsis.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]{2,}(\.\w+)?$")
NOT_RUN = re.compile(r"<!--\s*not run by tests/test_docs\.py:\s*(.+?)\s*-->")


@dataclass(frozen=True)
class Block:
    file: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason of a preceding NOT_RUN marker

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_blocks(name: str) -> list[Block]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = len(m.group(1)), m.group(2), m.group(3).strip()
        j = i + 1
        while j < len(lines) and lines[j].strip() != ticks:
            j += 1
        body = "\n".join(
            ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1 : j]
        )
        before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = NOT_RUN.search(before)
        lang = info.split()[0] if info else ""
        if not lang.startswith("{"):  # a MyST directive ({include}, {toctree}): not code
            blocks.append(Block(name, i + 1, lang, body, marker.group(1) if marker else None))
        i = j + 1
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("[") and logical and not current:
            logical[-1] += " " + line  # a usage synopsis that goes on, on the next line
            continue
        current += line
        if current.rstrip().endswith("\\"):
            current = current.rstrip()[:-1] + " "
            continue
        logical.append(current)
        current = ""
    if current:
        logical.append(current)
    commands = (shlex.split(_expand(c), comments=True) for c in logical)
    return [argv for argv in commands if argv]


#: The shell variables snippets use, as a first process of four would see them.
SHELL_VARS = {"RANK": "0", "WORLD": "4"}


def _expand(text: str) -> str:
    return re.sub(r"\$(\w+)", lambda m: SHELL_VARS.get(m.group(1), m.group(0)), text)


# ---- the files the snippets use -----------------------------------------------------------------


def _pipeline(folder: Path) -> None:
    """A random DDPMPipeline: 3x8x8 images (a stand-in for CIFAR-10), T = 50."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=50, clip_sample=True)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(str(folder))


@pytest.fixture(scope="session")
def docs_files(tmp_path_factory) -> Path:
    """The folder every Markdown file's snippets start from."""
    root = tmp_path_factory.mktemp("docs-files")
    run = root / "runs" / "digits"
    save_tiny_run(run, tiny_model(), step=2)
    shutil.copytree(run, root / "runs" / "digits3k")
    exported = shared_export(tmp_path_factory)
    (root / "runs" / "demo").mkdir()
    shutil.copy(exported, root / "runs" / "demo" / "model.onnx")
    shutil.copy(exported, root / "model.onnx")
    assert (
        main(
            [
                "export",
                str(root / "model.onnx"),
                "--precision",
                "int8",
                "--out",
                str(root / "model-int8.onnx"),
            ]
        )
        == 0
    )  # its int8 variant, for onnx.md
    _pipeline(root / "ddpm-cifar10")
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    np.savez(root / "images.npz", images=images)
    return root


class ExportCache:
    """``export_onnx`` that exports each distinct model once per session (see the module doc)."""

    def __init__(self, folder: Path, real) -> None:
        self.folder, self.real, self.files = folder, real, {}

    @staticmethod
    def key(model, diffusion, fp16: bool, opset: int) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps([diffusion.to_dict(), bool(fp16), int(opset)], sort_keys=True).encode())
        return h.hexdigest()[:16]

    def seed(self, path: Path, model, diffusion, fp16: bool = False) -> None:
        self.files[self.key(model, diffusion, fp16, 18)] = path

    def __call__(self, *args, **kwargs):
        bound = inspect.signature(self.real).bind(*args, **kwargs)  # the real one's arguments
        bound.apply_defaults()
        a = bound.arguments
        key = self.key(a["model"], a["diffusion"], a["fp16"], a["opset"])
        dest = Path(a["path"])
        if key not in self.files:
            result = self.real(*args, **kwargs)
            self.files[key] = shutil.copy(dest, self.folder / f"{key}.onnx")
            return result
        proto = onnx.load(str(self.files[key]))
        (entry,) = [p for p in proto.metadata_props if p.key == "refdiff"]
        meta = json.loads(entry.value)
        meta.pop("weights", None)
        if a["weights"] is not None:
            meta["weights"] = a["weights"]
        entry.value = json.dumps(meta, sort_keys=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(dest))
        return dest


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory) -> ExportCache:
    from refdiff.export.onnx_export import export_onnx

    cache = ExportCache(tmp_path_factory.mktemp("docs-exports"), export_onnx)
    for fp16 in (False, True):
        cache.seed(shared_export(tmp_path_factory, fp16=fp16), tiny_model(), tiny_diffusion(), fp16)
    return cache


# ---- one command ----------------------------------------------------------------------------------


def _subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


@contextlib.contextmanager
def _launcher_env():
    """One process of torchrun, for ``--shard auto`` (which reads the launcher at parse time)."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parse(argv: list[str], where: str) -> None:
    try:
        with _launcher_env() if "auto" in argv else contextlib.nullcontext():
            build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `refdiff {shlex.join(argv)}` does not parse (exit {exc.code})")


def long_reason(argv: list[str]) -> str | None:
    """Why a refdiff command is only parsed, or None to run it."""
    command = argv[0] if argv else ""
    if command == "train" and "--print-config" not in argv:
        return "training takes minutes to hours"
    if command == "demo":
        return "the demo takes about 6.5 minutes"
    for i, arg in enumerate(argv):
        device = arg.split("=", 1)[1] if arg.startswith("--device=") else None
        if arg == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
        if device is not None and device.startswith("cuda"):
            return "needs an NVIDIA GPU"
    if command == "eval" and "--n-images" in argv and argv[argv.index("--n-images") + 1] == "0":
        return "the full bound of every image of a split takes minutes to hours"
    if command == "sample" and "--n" in argv:
        n = int(argv[argv.index("--n") + 1])
        if "--shard" in argv:
            n //= int(argv[argv.index("--shard") + 1].split("/")[1])
        if n > MAX_SAMPLES:
            return f"{n} samples take minutes on a CPU"
    return None


def run_refdiff(argv: list[str], where: str, parse_only: str | None, capsys) -> None:
    if any(a.startswith("[") or PLACEHOLDER.match(a) for a in argv):  # a usage synopsis
        options = {s for a in _subparser(argv[0])._actions for s in a.option_strings}
        for flag in re.findall(r"--[\w-]+", " ".join(argv)):
            assert flag in options, f"{where}: `refdiff {argv[0]}` has no option {flag}"
        return
    reason = parse_only or long_reason(argv)
    if reason:
        _parse(argv, where)
        return
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    if code == 2 and re.search(r"is not installed: pip install \"refdiff\[\w+\]\"", out.err):
        return  # it needs an extra this environment lacks (the command line parsed, it started)
    assert code == 0, f"{where}: `refdiff {shlex.join(argv)}` exited {code}\n{out.out}\n{out.err}"


def _make(argv: list[str], where: str) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in (a for a in argv[1:] if "=" not in a):
        rule = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", makefile, re.M)
        assert rule, f"{where}: the Makefile has no target {target!r}"
        for recipe in rule.group(1).splitlines():
            if "bin/refdiff " in recipe:
                command = re.sub(r"\$\(\w+\)", "1", recipe.split("bin/refdiff ", 1)[1])
                _parse(shlex.split(command), f"{where} (make {target})")


def _pip(argv: list[str], where: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for arg in argv[2:]:
        m = re.fullmatch(r"refdiff\[([\w,\s-]+)\]", arg)
        assert m, f"{where}: `pip install {arg}`: not refdiff with extras"
        for extra in m.group(1).split(","):
            assert extra.strip() in extras, f"{where}: refdiff has no extra {extra.strip()!r}"


def run_command(argv: list[str], where: str, parse_only: str | None, capsys) -> None:
    program = Path(argv[0]).name
    if program == "refdiff":
        run_refdiff(argv[1:], where, parse_only, capsys)
    elif program == "torchrun":
        i = argv.index("-m")
        assert argv[i + 1] == "refdiff.cli", f"{where}: torchrun of {argv[i + 1]}"
        _parse(argv[i + 2 :], where)
    elif program == "make":
        _make(argv, where)
    elif program == "pip":
        _pip(argv, where)
    elif program.startswith("python") and argv[1:3] == ["-m", "pytest"]:
        for path in (a for a in argv[3:] if not a.startswith("-")):
            assert (ROOT / path.split("::")[0]).exists(), f"{where}: no test file {path}"
    elif program.startswith("python") and argv[1] == "-m" and argv[2].startswith("refdiff"):
        if parse_only is None:
            proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
            assert proc.returncode == 0, f"{where}: `{shlex.join(argv)}` failed\n{proc.stderr}"
    elif program.startswith("python") and argv[1] == "-c":
        compile(argv[2], where, "exec")
        if parse_only is None:
            proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
            assert proc.returncode == 0, f"{where}: `{shlex.join(argv)}` failed\n{proc.stderr}"
    elif program.startswith("python") and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).is_file(), f"{where}: no script {argv[1]}"
    elif program == "grep":
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{where}: `{shlex.join(argv)}` found nothing"
    elif parse_only is not None:  # the cluster's own commands (sbatch, mkdir): refdiff inside
        for wrapped in (a for a in argv if a.startswith("refdiff ")):
            run_refdiff(shlex.split(wrapped)[1:], where, parse_only, capsys)
    else:
        pytest.fail(f"{where}: no rule for the command {argv[0]!r}; add one to tests/test_docs.py")


# ---- one block ------------------------------------------------------------------------------------


def run_block(block: Block, namespace: dict, capsys) -> None:
    where = block.where
    if block.lang == "python":
        code = compile(block.text, where, "exec")
        if block.not_run is None and block.file not in PENDING:
            with warnings.catch_warnings(record=True):  # a user sees them; they do not stop it
                warnings.simplefilter("always")
                exec(code, namespace)
    elif block.lang in ("bash", "sh", "shell"):
        for argv in shell_commands(block.text):
            run_command(argv, where, block.not_run, capsys)
    elif block.lang == "json":
        data = json.loads(block.text)
        if isinstance(data, dict) and {"format", "diffusion"} <= set(data):
            from refdiff.onnx_contract import ModelMetadata

            ModelMetadata.from_json(block.text, source=where)
    elif block.lang == "toml":
        data = tomllib.loads(block.text)
        name = re.match(r"#\s*(\S+\.toml)", block.text)
        if name:
            Path(name.group(1)).write_text(block.text, encoding="utf-8")
            from refdiff.runs import resolve_config

            resolve_config(name.group(1))
        assert isinstance(data, dict)
    elif block.lang == "js":
        node = shutil.which("node")
        if node is not None:
            path = Path(f"snippet-{block.line}.mjs")
            path.write_text(block.text, encoding="utf-8")
            proc = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{where}: not valid JavaScript\n{proc.stderr}"
    elif block.lang != "text":
        pytest.fail(
            f"{where}: a code block without a known tag ({block.lang!r}); tag it bash, "
            "python, js, json, toml or text"
        )


@pytest.mark.parametrize("name", DOCS)
def test_the_snippets_run(name, docs_files, export_cache, tmp_path, monkeypatch, capsys):
    shutil.copytree(docs_files, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(refdiff.export, "export_onnx", export_cache)
    monkeypatch.setattr(sys, "argv", ["snippet"])
    namespace: dict = {"__name__": "__snippet__"}
    for block in read_blocks(name):
        t0 = time.perf_counter()
        run_block(block, namespace, capsys)
        seconds = time.perf_counter() - t0
        if os.environ.get("DOCS_TIMES"):
            with open(os.environ["DOCS_TIMES"], "a") as f:
                f.write(f"{block.where} {block.lang} {seconds:.1f}\n")
        assert seconds < BLOCK_SECONDS, (
            f"{block.where} took {seconds:.0f} s: make it faster, or mark it "
            "<!-- not run by tests/test_docs.py: REASON --> and say why"
        )
    if name in PENDING:
        pytest.skip(f"{name}: its commands ran; its Python was compiled only: {PENDING[name]}")


def test_the_rules_tell_long_commands():
    assert long_reason(["train", "--data", "digits", "--out", "x"])
    assert long_reason(["train", "--out", "x", "--print-config"]) is None
    assert long_reason(["sample", "m.onnx", "--n", "10000", "--shard", "0/4"])
    assert long_reason(["sample", "m.onnx", "--n", "64"]) is None
    assert long_reason(["sample", "m.onnx", "--device", "cuda:1"])
    assert long_reason(["demo"])
    assert long_reason(["eval", "runs/x", "--n-images", "0"])
    assert long_reason(["eval", "m.onnx", "--n-images", "10"]) is None
    assert shell_commands("refdiff eval a \\\n    --out b   # c\n\n# d\nmake demo") == [
        ["refdiff", "eval", "a", "--out", "b"],
        ["make", "demo"],
    ]
    assert shell_commands("refdiff check A [--n 1]\n    [--seed S]") == [
        ["refdiff", "check", "A", "[--n", "1]", "[--seed", "S]"]
    ]
