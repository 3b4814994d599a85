"""The dependency floors that pyproject.toml declares, as requirements and as a check.

    python .ci/floors.py requirements [--pinned torch] data eval onnx torch test
    python .ci/floors.py check [--pinned torch] data eval onnx torch test

``requirements`` prints the base requirements and those of the extras named, one a line;
``check`` compares what is installed with the floors and exits 1 when one differs.

`make test-floors` installs the requirements with uv's lowest-direct resolution and wheels only,
so every package pyproject.toml names gets its oldest allowed release and the packages they pull
in get their newest. `check` then proves that what was installed is the floor that pyproject.toml
declares, to the precision it is written in (``numpy>=1.26`` is met by 1.26.x; ``pillow>=9``
is not met by 9.3, which is what a missing wheel for this Python would give): a floor that cannot
install here fails the run instead of being silently replaced by a newer release. A package named
in several places (array-api-compat in the base and in the torch extra) has the highest of its
floors. A ``--pinned`` package is left out of the requirements (it is installed otherwise) and
reported, not checked.
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
    return list(dict.fromkeys(reqs))


def _floor(spec: str) -> str | None:
    m = re.search(r">=\s*([0-9][0-9.]*)", spec)
    return m.group(1) if m else None


def _release(version: str, width: int) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:width]]
    return tuple(parts + [0] * (width - len(parts)))


def floors(extras: list[str]) -> dict[str, tuple[str, str | None]]:
    """Package -> (its specifiers, joined; its highest floor) over the base and ``extras``."""
    out: dict[str, tuple[str, str | None]] = {}
    for req in requirements(extras):
        m = _REQ.match(req)
        assert m is not None, req
        pkg, spec = m.group(1).lower(), m.group(3).strip()
        old_spec, old_floor = out.get(pkg, ("", None))
        floor = _floor(spec)
        if old_floor is not None and (floor is None or _release(old_floor, 4) > _release(floor, 4)):
            floor = old_floor
        out[pkg] = (", ".join(s for s in (old_spec, spec) if s), floor)
    return out


def check(extras: list[str], pinned: set[str]) -> int:
    """Print each package's declared floor and installed version; 1 if any is not its floor."""
    bad = 0
    for pkg, (spec, floor) in floors(extras).items():
        try:
            installed = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            print(f"  {pkg:<18} declared {spec:<22} NOT INSTALLED")
            bad += 1
            continue
        if pkg in pinned or floor is None:
            why = "pinned: its floor is not tested" if pkg in pinned else "no floor"
            print(f"  {pkg:<18} declared {spec or '(any)':<22} installed {installed} ({why})")
            continue
        width = max(2, floor.count(".") + 1)
        ok = _release(installed, width) == _release(floor, width)
        mark = "" if ok else f"  <- NOT THE FLOOR {floor}"
        print(f"  {pkg:<18} declared {spec:<22} installed {installed}{mark}")
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
    command, rest = argv[0], argv[1:]
    pinned: set[str] = set()
    while rest[:1] == ["--pinned"] and len(rest) > 1:
        pinned.add(rest[1].lower())
        rest = rest[2:]
    if command == "requirements":
        keep = [r for r in requirements(rest) if _REQ.match(r).group(1).lower() not in pinned]
        print("\n".join(keep))
        return 0
    return check(rest, pinned)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
