"""Docstrings that share parameters: one function documents them, the others borrow the entries.

The seven samplers share thirteen settings, and ``sample_array`` takes what ``sample_images``
takes: written in each, the entries would drift apart. :func:`parameters_from` completes a
function's numpydoc docstring from another's when it is defined, so ``help()``, the reference
site and its check of every public parameter (docs/_ext/refdiff_apidoc.py) see whole docstrings
while the source holds each entry once.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["parameters_from"]

F = TypeVar("F", bound=Callable[..., Any])

_HEADER = re.compile(r"^([A-Z][A-Za-z ]*)\n-{3,}\n", re.MULTILINE)


def _sections(doc: str) -> tuple[str, dict[str, str]]:
    """(the text before the first section, {header: body}) of a dedented numpydoc docstring."""
    found = list(_HEADER.finditer(doc))
    if not found:
        return doc, {}
    ends = [m.start() for m in found[1:]] + [len(doc)]
    return doc[: found[0].start()], {
        m.group(1): doc[m.end() : e] for m, e in zip(found, ends, strict=True)
    }


def _entries(body: str) -> list[str]:
    """The entries of a section: each from its unindented first line to the next one."""
    entries: list[str] = []
    for line in body.strip("\n").splitlines():
        if line.strip() and not line[0].isspace():
            entries.append(line + "\n")
        elif entries:
            entries[-1] += line + "\n"
    return entries


def _names(entry: str) -> list[str]:
    """The parameters an entry documents: ``xp, dtype, device : ...`` documents three."""
    head = entry.split("\n", 1)[0].split(" : ", 1)[0]
    return [n.strip().lstrip("*") for n in head.split(",")]


def parameters_from(source: Callable[..., Any]) -> Callable[[F], F]:
    """A decorator that completes a function's docstring from ``source``'s.

    Each parameter of the function's signature gets the function's own entry in its
    ``Parameters`` section, else ``source``'s entry for it (an entry naming several parameters
    comes once, where the first of them stands); the entries follow the signature's order. The
    function's ``Returns`` section stays, or ``source``'s is taken where it has none; its other
    sections stay as they are.

    Parameters
    ----------
    source : callable
        The function whose numpydoc docstring documents the shared parameters.

    Returns
    -------
    callable
        The decorator; it sets the function's ``__doc__`` and returns the function.
    """
    _, theirs = _sections(inspect.cleandoc(source.__doc__ or ""))
    their_entries = _entries(theirs.get("Parameters", ""))

    def decorate(func: F) -> F:
        text, mine = _sections(inspect.cleandoc(func.__doc__ or ""))
        my_entries = _entries(mine.pop("Parameters", ""))
        chosen: list[str] = []
        for name in inspect.signature(func).parameters:
            if any(name in _names(e) for e in chosen):
                continue
            for entries in (my_entries, their_entries):
                entry = next((e for e in entries if name in _names(e)), None)
                if entry is not None:
                    chosen.append(entry)
                    break
        sections = {"Parameters": "".join(chosen), "Returns": theirs.get("Returns", "")}
        sections.update(mine)
        parts = [text.rstrip("\n") + "\n"]
        for header, body in sections.items():
            if body.strip():
                parts.append(f"{header}\n{'-' * len(header)}\n{body.strip(chr(10))}\n")
        func.__doc__ = "\n".join(parts)
        return func

    return decorate
