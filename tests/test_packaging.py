"""What the wheel ships: every package of the source tree, the license, the console script.

The build itself (sdist and wheel, ``twine check``, the wheel in a clean venv) is ``make dist``;
these are the fast checks of the configuration it reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_packages() -> dict[str, str]:
    """Import name -> folder (relative to the root) of every package in the source tree."""
    found = {"refdiff.export": "export"}
    for init in (ROOT / "refdiff").rglob("__init__.py"):
        folder = init.parent.relative_to(ROOT)
        found[".".join(folder.parts)] = folder.as_posix()
    return found


def test_every_package_folder_ships_in_the_wheel():
    config = PYPROJECT["tool"]["setuptools"]
    source = _source_packages()
    listed = set(config["packages"])
    assert listed == set(source), (
        f"pyproject.toml [tool.setuptools] packages misses {sorted(set(source) - listed)} "
        f"and lists {sorted(listed - set(source))} that do not exist"
    )
    assert {k: v for k, v in config["package-dir"].items() if k in source} == source


def test_license_is_an_spdx_expression_with_its_file():
    project = PYPROJECT["project"]
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause License" in text and "refdiff developers" in text
