"""Run Python code in a child process where some modules cannot be imported.

A meta-path finder installed before anything else raises ``ModuleNotFoundError`` for the blocked
top-level modules (and their submodules) and records every attempt in ``BLOCKED_ATTEMPTS``; the
tests use it to prove that the core, the runtime and the commands work without torch (or without
an extra) and that an attempt is never even made.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path


def blocker(modules: Sequence[str] = ("torch",)) -> str:
    """Source code that blocks ``modules`` (top-level names) in the process that runs it."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED_ATTEMPTS = []

        class _Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(modules)!r}:
                    BLOCKED_ATTEMPTS.append(name)
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
                return None

        sys.meta_path.insert(0, _Blocker())
        """
    )


def run_blocked(
    body: str, cwd: Path, modules: Sequence[str] = ("torch",), timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``body`` with ``modules`` blocked, in ``cwd``; return the finished process."""
    code = blocker(modules) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def run_blocked_json(body: str, cwd: Path, modules: Sequence[str] = ("torch",)) -> dict:
    """Like :func:`run_blocked`; ``body`` must succeed and print one JSON line last."""
    proc = run_blocked(body, cwd, modules)
    assert proc.returncode == 0, f"child failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
