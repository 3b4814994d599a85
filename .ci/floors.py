"""The dependency floors that pyproject.toml declares, as requirements and as a check.

    python .ci/floors.py requirements data eval onnx test   # the base and these extras, one a line
    python .ci/floors.py check data eval onnx test          # installed == declared floor, or exit 1

`make test-floors` installs the requirements with uv's lowest-direct resolution and wheels only,
so every package pyproject.toml names gets its oldest allowed release and the packages they pull
in get their newest. `check` then proves that what was installed is the floor that pyproject.toml
declares, to the precision it is written in (``numpy>=1.26`` is met by 1.26.x; ``pillow>=9``
is not met by 9.3, which is what a missing wheel for this Python would give): a floor that cannot
install here fails the run instead of being silently replaced by a newer release.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*)$")


def requirements(extras: list[str]) -> list[str]:
    """The base requirements and those of ``extras``, with the project's own extras expanded."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    todo = list(extras)
    done: set[str] = set()
    reqs = list(project["dependencies"])
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        if extra not in optional:
            raise SystemExit(f"floors: pyproject.toml has no extra {extra!r}")
        done.add(extra)
        for req in optional[extra]:
            m = _REQ.match(req)
            if m and m.group(1) == name:  # refdiff[data]: another extra of the project
                todo += [e.strip() for e in m.group(2).strip("[]").split(",")]
            else:
                reqs.append(req)
    for req in reqs:
        if req not in out:
            out.append(req)
    return out


def _floor(spec: str) -> str | None:
    m = re.search(r">=\s*([0-9][0-9.]*)", spec)
    return m.group(1) if m else None


def _release(version: str, width: int) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:width]]
    return tuple(parts + [0] * (width - len(parts)))


def check(extras: list[str]) -> int:
    """Print each package's declared floor and installed version; 1 if any is not its floor."""
    bad = 0
    seen: set[str] = set()
    for req in requirements(extras):
        m = _REQ.match(req)
        assert m is not None, req
        pkg, spec = m.group(1), m.group(3)
        if pkg.lower() in seen:
            continue
        seen.add(pkg.lower())
        floor = _floor(spec)
        try:
            installed = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            print(f"  {pkg:<18} declared {spec:<14} NOT INSTALLED")
            bad += 1
            continue
        if floor is None:
            print(f"  {pkg:<18} declared {spec or '(any)':<14} installed {installed} (no floor)")
            continue
        width = max(2, floor.count(".") + 1)
        ok = _release(installed, width) == _release(floor, width)
        print(
            f"  {pkg:<18} declared {spec:<14} installed {installed}{'' if ok else '  <- NOT THE FLOOR'}"
        )
        bad += not ok
    if bad:
        print(
            f"floors: {bad} package(s) did not install at their declared floor on Python "
            f"{sys.version.split()[0]}: raise the floor in pyproject.toml to the oldest release "
            "that installs (and say why in CHANGELOG.md)"
        )
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ("requirements", "check"):
        print(__doc__)
        return 2
    extras = argv[1:]
    if argv[0] == "requirements":
        print("\n".join(requirements(extras)))
        return 0
    return check(extras)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
