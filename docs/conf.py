"""Sphinx configuration: the docs/ pages (Markdown, through MyST) and the API reference.

The reference is written from the modules that exist by ``_ext/refdiff_apidoc.py`` before Sphinx
reads anything (api/ and cli.md are generated, not committed). ``make docs`` builds with
warnings as errors.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import refdiff_apidoc  # noqa: E402

import refdiff  # noqa: E402

project = "refdiff"
author = "refdiff developers"
copyright = "2026, refdiff developers"
release = refdiff.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "refdiff_apidoc",
]

refdiff_apidoc.write_api_pages(HERE / "api", HERE / "cli.md")

# numpydoc reports a docstring it cannot read (an unknown section drops its text from the page)
# as a Python warning, which sphinx-build -W does not count: make it an error.
warnings.filterwarnings("error", category=UserWarning, module="numpydoc")

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types and shapes
autodoc_member_order = "bysource"
autosummary_generate = False  # the pages are written by refdiff_apidoc, not autosummary
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"refdiff {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "header_links_before_dropdown": 4,
    "navbar_align": "left",
}
html_static_path: list[str] = []
