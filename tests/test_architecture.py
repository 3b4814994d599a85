"""The shape of the house (docs/architecture.md), checked from the source: imports run one way,
down the floors; no module imports another's private names; no module grows past ~600 lines; the
base install is the core's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "refdiff"
EXPORT = ROOT / "export"

#: The floors of docs/architecture.md, lowest first. A module may import modules of its own floor
#: or below; ``data`` stands apart (it may import only the optional-dependency and argument-check
#: helpers).
FLOORS: list[tuple[str, ...]] = [
    ("_version", "_enums", "_deps", "_io", "_checks", "_docstrings"),
    ("_array", "schedules", "noise", "data"),
    ("_formulas", "forward"),
    ("reverse", "losses"),
    (
        "bound",
        "samplers",
        "sampler_loop",
        "sampler_registry",
        "plans",
        "solvers",
        "oracle",
        "fused",
    ),
    ("settings", "diffusers_config", "timestep_sampling", "baseline", "images", "plots"),
    ("onnx_contract", "precision", "runs"),
    ("runtime", "evaluation", "graph", "nn"),
    ("training", "export", "models"),
    ("commands", "cli", "__init__"),
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _modules() -> dict[str, Path]:
    """refdiff.<dotted name> -> file, with export/ mapped to refdiff.export."""
    out = {}
    for root, prefix in ((PACKAGE, "refdiff"), (EXPORT, "refdiff.export")):
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


MODULES = _modules()


def _home(module: str) -> str:
    """The floor name of a module: its first component under refdiff."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, file: Path) -> list[tuple[str, list[str], int]]:
    """(imported refdiff module, imported names, line) for each import of ``file``, resolved."""
    tree = ast.parse(file.read_text(encoding="utf-8"))
    is_pkg = file.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "refdiff":
                names = [a.name for a in node.names]
                # `from . import x` imports the submodule x
                sub = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
                if sub:
                    found.extend((s, [], node.lineno) for s in sub)
                else:
                    found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "refdiff":
                    found.append((a.name, [], node.lineno))
    return found


def test_imports_run_down_the_floors():
    unknown = sorted({_home(m) for m in MODULES} - set(FLOOR))
    assert not unknown, f"modules with no floor in docs/architecture.md and this test: {unknown}"
    bad = []
    for module, file in MODULES.items():
        home = _home(module)
        for target, _, line in _imports(module, file):
            there = _home(target)
            if there == home:
                continue
            if home == "data" and there not in ("_deps", "_checks"):
                bad.append(f"{file.relative_to(ROOT)}:{line}: the readers stand apart ({target})")
            elif FLOOR[there] > FLOOR[home]:
                bad.append(f"{file.relative_to(ROOT)}:{line}: {home} imports {target} (up)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, _, _ in _imports(m, f) if t in MODULES} for m, f in MODULES.items()}
    # lazily imported packages (PEP 562) aside, a cycle at import time would be a bug
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if n == m or n.startswith(m + "."):
                continue  # a package importing its own submodules
            if state.get(n) == 1 and not m.startswith(n + "."):
                raise AssertionError("import cycle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for module, file in MODULES.items():
        for target, names, line in _imports(module, file):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                bad.append(f"{file.relative_to(ROOT)}:{line}: from {target} import {private}")
        tree = ast.parse(file.read_text(encoding="utf-8"))
        aliases = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level
            for a in node.names
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{file.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_no_module_is_over_600_lines():
    big = {
        str(f.relative_to(ROOT)): n
        for f in MODULES.values()
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > 620
    }
    assert not big, f"split these by job: {big}"


def test_base_install_is_the_core():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert base == {"numpy", "scipy", "array-api-compat"}
    extras = project["optional-dependencies"]
    for heavy in ("matplotlib", "scikit-learn", "pillow", "tqdm", "torch", "onnxruntime"):
        assert any(heavy in " ".join(v) for v in extras.values()), heavy


def test_core_runs_without_the_extras(tmp_path):
    """The core, the settings and the readers' package import and run with none of the extras;
    a reader that needs one says which extra installs it."""
    from blocking import run_blocked

    blocked = ["torch", "matplotlib", "sklearn", "PIL", "tqdm", "onnxruntime", "safetensors"]
    proc = run_blocked(
        """
        import numpy as np, refdiff as rd, refdiff.data, refdiff.runs
        d = rd.Diffusion(rd.get_schedule("cosine", 20), prediction="v", image_shape=(1, 4, 4))
        x = d.sample(lambda x, t: 0.1 * x, 2, sampler="ddim", steps=5)
        assert np.isfinite(x).all() and not BLOCKED_ATTEMPTS, BLOCKED_ATTEMPTS
        try:
            refdiff.data.load_digits()
        except ImportError as e:
            print(e)
        """,
        tmp_path,
        blocked,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'needs scikit-learn, which is not installed: pip install "refdiff[data]"' in proc.stdout


@pytest.mark.slow
def test_pip_install_brings_only_the_core(tmp_path):
    """``pip install .`` into a clean venv: no matplotlib, no scikit-learn; the core runs."""
    import subprocess
    import venv

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", str(ROOT)], check=True, capture_output=True, timeout=600
    )
    freeze = subprocess.run(
        [py, "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout.lower()
    for absent in ("matplotlib", "scikit-learn", "pillow", "tqdm", "torch", "onnxruntime"):
        assert absent not in freeze, absent
    run = subprocess.run(
        [py, "-c", "import refdiff as rd; print(rd.Diffusion().num_timesteps)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0 and run.stdout.strip() == "1000", run.stderr
