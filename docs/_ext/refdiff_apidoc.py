"""The API reference of refdiff, written from the modules that exist, and a check of its docstrings.

Sphinx's autosummary can walk a package, but it documents a re-exported name once per package that
re-exports it (``refdiff.q_sample`` and ``refdiff.forward.q_sample``), and it cannot link a
package's table to the module that defines each name. So this extension writes the reST itself,
before Sphinx reads the sources (``write_api_pages``, called from conf.py):

- one page per public module (every module under ``refdiff`` and ``refdiff.export`` whose name has
  no ``_`` component), with autodoc entries for the names *defined* there: its ``__all__``, or
  its public functions and classes when it has none;
- a package's page lists what it re-exports in a table that links to the defining module's page;
  a name defined in a private module (``refdiff._array.Timesteps``) is documented in full on the
  first public package that exports it;
- ``cli.md``: every ``refdiff`` command's ``--help``, from ``refdiff.cli.build_parser``.

A new module appears in the reference with no edit here. The check (``check_public_api``) runs at
``builder-inited``: every name in the ``__all__`` of ``PUBLIC_PACKAGES`` must have a numpydoc
docstring with a summary, every parameter in ``Parameters`` (or ``Other Parameters``; a class's
fields may be in ``Attributes``), no parameter documented that the signature lacks, and a
``Returns`` (or ``Yields``) section unless it returns ``None`` (a ``typing.Protocol`` is checked
for its summary only: it is never called). Each failure is a Sphinx warning, so ``make docs``
(``-W``) fails on it. Docstrings that share parameters borrow the entries
(``refdiff._docstrings.parameters_from``), so the check sees them whole.
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import io
import os
import pkgutil
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any

from numpydoc.docscrape import NumpyDocString
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: the packages walked for module pages, in the order of the reference's table of contents
ROOTS = ("refdiff", "refdiff.export")
#: the packages whose ``__all__`` is the public API that the docstring check holds to account
PUBLIC_PACKAGES = ("refdiff", "refdiff.runtime", "refdiff.evaluation", "refdiff.export")
#: groups of the reference's contents: (title, module-name prefixes); the first match wins
GROUPS = (
    ("The core (array API, no torch)", ("refdiff",)),
    ("Data readers", ("refdiff.data",)),
    ("Runs, checkpoints and settings files", ("refdiff.runs",)),
    ("Sampling without PyTorch", ("refdiff.runtime",)),
    ("Evaluation", ("refdiff.evaluation",)),
    ("PyTorch: the U-Net and training", ("refdiff.nn", "refdiff.training")),
    ("Export to ONNX", ("refdiff.export",)),
    ("The command line", ("refdiff.cli", "refdiff.commands")),
)


def _is_private(modname: str) -> bool:
    return any(part.startswith("_") for part in modname.split("."))


@functools.cache
def public_modules() -> tuple[str, ...]:
    """Every public module under :data:`ROOTS`, imported; packages before their modules."""
    names: list[str] = []
    for root in ROOTS:
        pkg = importlib.import_module(root)
        names.append(root)
        for info in pkgutil.walk_packages(pkg.__path__, root + "."):
            names.append(info.name)
    seen: set[str] = set()
    out = []
    for name in names:
        if name in seen or _is_private(name):
            continue
        seen.add(name)
        importlib.import_module(name)
        out.append(name)
    return tuple(out)


def _assigned_here(module: ModuleType, name: str) -> bool:
    """Whether ``name`` is assigned at the top level of ``module``'s source (a constant)."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(name)}\s*(:[^=\n]*)?=", source, re.MULTILINE) is not None


def _home(obj: Any) -> str | None:
    """The module that defines ``obj``, or None when it cannot be told (a constant)."""
    mod = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isroutine(obj)) and isinstance(mod, str):
        return mod
    return None


def members(modname: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(names documented on this module's page, [(name, defining module)] re-exported here).

    A name is documented where it is defined; a name defined in a private module is documented on
    the first public package that exports it.
    """
    module = importlib.import_module(modname)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == modname
        ]
    here: list[str] = []
    elsewhere: list[tuple[str, str]] = []
    for name in names:
        if name.startswith("__"):
            continue
        obj = getattr(module, name)
        home = _home(obj)
        if home is None:  # a constant: documented where its module assigns it
            if _assigned_here(module, name):
                here.append(name)
            else:
                elsewhere.append((name, _constant_home(modname, name, obj)))
            continue
        if _is_private(home):
            home = _public_exporter(obj, name) or home
        if home == modname:
            here.append(name)
        else:
            elsewhere.append((name, home))
    return here, elsewhere


def _constant_home(modname: str, name: str, obj: Any) -> str:
    """The public module below ``modname`` whose source assigns the constant ``name``."""
    for other in public_modules():
        if other != modname and other.startswith(modname.split(".")[0]):
            mod = importlib.import_module(other)
            if getattr(mod, name, None) is obj and _assigned_here(mod, name):
                return other
    return modname


def _public_exporter(obj: Any, name: str) -> str | None:
    """The deepest public module whose ``__all__`` exports ``obj`` (``refdiff.reverse`` rather
    than ``refdiff`` for a name defined in ``refdiff._formulas``)."""
    found = [
        m
        for m in public_modules()
        if name in getattr(importlib.import_module(m), "__all__", ())
        and getattr(importlib.import_module(m), name, None) is obj
    ]
    return max(found, key=lambda m: m.count("."), default=None)


def _directive(module: ModuleType, name: str) -> str:
    obj = getattr(module, name)
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return f".. autoexception:: {name}\n   :show-inheritance:\n"
        if issubclass(obj, enum.Enum):
            return f".. autoclass:: {name}\n   :members:\n   :undoc-members:\n   :member-order: bysource\n"
        if issubclass(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple: fields in Attributes
            return f".. autoclass:: {name}\n"
        return f".. autoclass:: {name}\n   :members:\n   :show-inheritance:\n"
    if inspect.isroutine(obj):
        return f".. autofunction:: {name}\n"
    return f".. autodata:: {name}\n   :no-value:\n"


def module_page(modname: str) -> str:
    """The reST of one module's page."""
    module = importlib.import_module(modname)
    here, elsewhere = members(modname)
    title = f"``{modname}``"
    lines = [title, "=" * len(title), "", f".. automodule:: {modname}", "   :no-members:", ""]
    if elsewhere:
        lines += ["Re-exported here, documented where they are defined:", ""]
        lines += [".. currentmodule:: None", "", ".. autosummary::", ""]
        lines += [f"   ~{home}.{name}" for name, home in elsewhere]
        lines.append("")
    if here:
        lines += [f".. currentmodule:: {modname}", "", ".. autosummary::", ""]
        lines += [f"   {name}" for name in here]
        lines.append("")
        for name in here:
            lines += [_directive(module, name)]
    return "\n".join(lines)


def _group(modname: str) -> int:
    best, best_len = 0, -1
    for i, (_, prefixes) in enumerate(GROUPS):
        for p in prefixes:
            if (modname == p or modname.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def index_page(modules: tuple[str, ...]) -> str:
    lines = [
        "API reference",
        "=============",
        "",
        "One page per module, generated from the docstrings of the modules that exist. A package's",
        "page lists the names it re-exports and links each to the module that defines it; the",
        "public API is what ``refdiff``, ``refdiff.runtime``, ``refdiff.evaluation`` and",
        "``refdiff.export`` export (their ``__all__``).",
        "",
    ]
    for i, (title, _) in enumerate(GROUPS):
        group = [m for m in modules if _group(m) == i]
        if not group:
            continue
        lines += [title, "-" * len(title), "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {m}" for m in group]
        lines.append("")
    return "\n".join(lines)


def cli_page() -> str:
    """Every command's ``--help`` as the user sees it (80 columns)."""
    from refdiff.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        parser = build_parser()
        blocks = [("refdiff", parser)]
        for action in parser._subparsers._group_actions:  # argparse keeps no public list
            blocks += [(f"refdiff {n}", p) for n, p in action.choices.items()]
        out = [
            "# The `refdiff` command",
            "",
            "Each command's `--help`, as printed by the installed version.",
            "",
        ]
        for prog, p in blocks:
            buf = io.StringIO()
            with redirect_stdout(buf):
                p.print_help()
            out += [f"## `{prog}`", "", "```text", buf.getvalue().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _write(path: Path, text: str) -> None:
    """Write only when the text changed, so Sphinx rebuilds only what did."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_api_pages(out: Path, cli_out: Path) -> tuple[str, ...]:
    """Write ``out/index.rst``, one ``out/<module>.rst`` per public module, and ``cli_out``."""
    out.mkdir(parents=True, exist_ok=True)
    modules = public_modules()
    wanted = {f"{m}.rst" for m in modules} | {"index.rst"}
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    for m in modules:
        _write(out / f"{m}.rst", module_page(m))
    _write(out / "index.rst", index_page(modules))
    _write(cli_out, cli_page())
    return modules


# --- the docstring check ----------------------------------------------------------------------


def public_api() -> Iterator[tuple[str, Any]]:
    """(qualified name, object) for every name in the ``__all__`` of :data:`PUBLIC_PACKAGES`."""
    for pkgname in PUBLIC_PACKAGES:
        pkg = importlib.import_module(pkgname)
        for name in pkg.__all__:
            if not name.startswith("__"):
                yield f"{pkgname}.{name}", getattr(pkg, name)


def _documented(doc: NumpyDocString, *sections: str) -> set[str]:
    names: set[str] = set()
    for section in sections:
        for param in doc[section]:
            for n in param.name.split(","):
                names.add(n.strip().lstrip("*"))
    return names


def docstring_problems(qualname: str, obj: Any) -> list[str]:
    """What the docstring of one public name lacks, as one line each (empty when none)."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return []  # a constant: documented by a ``#:`` comment where it is assigned
    raw = inspect.getdoc(obj)
    if not raw:
        return [f"{qualname}: no docstring"]
    try:
        doc = NumpyDocString(raw)
    except Exception as exc:  # numpydoc raises ValueError on a malformed section
        return [f"{qualname}: the docstring does not parse as numpydoc ({exc})"]
    problems = []
    if not doc["Summary"]:
        problems.append(f"{qualname}: no summary line")
    if inspect.isclass(obj) and issubclass(obj, (enum.Enum, BaseException)):
        return problems
    if getattr(obj, "_is_protocol", False):  # never instantiated: its signature is (*args, **kwargs)
        return problems
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return problems
    params = {n: p for n, p in sig.parameters.items() if n not in ("self", "cls")}
    sections = ("Parameters", "Other Parameters")
    if inspect.isclass(obj):
        sections += ("Attributes",)
    documented = _documented(doc, *sections)
    missing = [n for n in params if n not in documented]
    if missing:
        problems.append(
            f"{qualname}: parameters not in its Parameters section: {', '.join(missing)}"
        )
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = sorted(documented - set(params)) if not (takes_any or inspect.isclass(obj)) else []
    if extra:
        problems.append(f"{qualname}: documents parameters its signature lacks: {', '.join(extra)}")
    if inspect.isroutine(obj) and sig.return_annotation not in ("None", None):
        if not (doc["Returns"] or doc["Yields"]):
            problems.append(f"{qualname}: no Returns section")
    return problems


def check_public_api(app: Any) -> None:
    for qualname, obj in public_api():
        for problem in docstring_problems(qualname, obj):
            logger.warning(problem, type="refdiff", subtype="api")


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", check_public_api)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
