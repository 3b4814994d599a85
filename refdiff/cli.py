"""The ``refdiff`` command: demo, train, export, sample, eval, check.

Each subcommand lives in its own module of :mod:`refdiff.commands` exposing
``add_parser(subparsers)``; those modules import
their heavy dependencies (torch, onnxruntime) only when the command runs, so ``refdiff sample``
never imports torch and ``refdiff --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._deps import MissingDependency
from ._io import OutputError, describe_os_error
from ._version import __version__

# subcommand -> module providing add_parser(subparsers)
COMMANDS = {
    "demo": "refdiff.commands.demo",
    "train": "refdiff.commands.train",
    "export": "refdiff.commands.export",
    "check": "refdiff.commands.export",
    "sample": "refdiff.commands.sample",
    "eval": "refdiff.commands.eval",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refdiff",
        description=(
            "Gaussian diffusion models you can check, train, export to ONNX and sample without "
            "PyTorch. Start with `refdiff demo`; every command has --help."
        ),
    )
    parser.add_argument("--version", action="version", version=f"refdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for name, module in COMMANDS.items():
        if module in seen:
            continue
        seen.add(module)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # a subsystem whose optional dependencies are missing
            if exc.name and exc.name.startswith("refdiff"):
                raise
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(func=lambda args, e=exc: _unavailable(e))
            continue
        mod.add_parser(sub)
    return parser


#: module (top level) -> the extra that installs it, for "No module named ..." errors
EXTRAS = {
    "torch": "torch",
    "safetensors": "torch",
    "onnx": "torch",
    "onnxscript": "torch",
    "onnxruntime": "onnx",
    "PIL": "data",
    "sklearn": "data",
    "matplotlib": "eval",
    "tqdm": "eval",
    "diffusers": "diffusers",
    "cupy": "cuda12] or [cuda13",
}


def missing_dependency_message(exc: ImportError) -> str:
    """One line naming the missing package and the extra that installs it."""
    if isinstance(exc, MissingDependency):
        return str(exc)
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return str(exc)
    return f'{top} is not installed: pip install "refdiff[{extra}]" ({exc})'


def _unavailable(exc: ImportError) -> int:
    print(
        f"refdiff: this command needs a missing package: {missing_dependency_message(exc)}",
        file=sys.stderr,
    )
    return 2


def _os_error_message(exc: OSError) -> str:
    """``cannot write 'x': No space left on device`` for any OSError, on one line."""
    if isinstance(exc, OutputError) or exc.filename is None:
        return str(exc)
    return describe_os_error(exc, exc.filename, "use")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--opt -1/4`` -> ``--opt=-1/4``: argparse takes a value that starts with '-' and is not a
    plain number for an option and answers "expected one argument"; attached, the value reaches
    the option's own check, whose message says what is wrong with it."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if (
            out
            and prev.startswith("--")
            and "=" not in prev
            and out[-1] == prev
            and len(arg) > 1
            and arg[0] == "-"
            and (arg[1].isdigit() or arg[1] == ".")
        ):
            out[-1] = f"{prev}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"refdiff {args.command}"
    try:
        return int(args.func(args) or 0)
    except ImportError as exc:  # an optional dependency of this command is missing
        print(f"{prog}: error: {missing_dependency_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, a missing file
        print(f"{prog}: error: {_os_error_message(exc)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FloatingPointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
