"""The sampler flags every command that samples shares, written from the registry.

``--sampler`` (its choices and help from :data:`refdiff.SAMPLERS`), ``--steps``, ``--spacing``,
and one flag per sampler option (``--eta``, ``--lower-order-final``, ...): a new sampler or option
in the registry appears here with nothing to edit. :func:`choose_sampler` turns the parsed flags
into a :class:`~refdiff.SamplerChoice` for a model, checked once.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._enums import Spacing
from ..sampler_registry import Option, SamplerChoice
from ..samplers import DEFAULT_SAMPLER, SAMPLERS
from ..settings import Diffusion
from ._argtypes import positive_int

__all__ = [
    "add_sampler_arguments",
    "choose_sampler",
    "option_flags",
    "sampler_flags_given",
    "sampler_table",
]


def option_flags() -> dict[str, list[tuple[str, Option]]]:
    """Each option name of the registry -> the (sampler, option) pairs that declare it."""
    flags: dict[str, list[tuple[str, Option]]] = {}
    for name, spec in SAMPLERS.items():
        for opt in spec.options:
            flags.setdefault(opt.name, []).append((name, opt))
    for opt_name, users in flags.items():
        kinds = {o.kind for _, o in users}
        if len(kinds) != 1:  # one flag, one type
            raise TypeError(f"option {opt_name!r} has different types across samplers: {kinds}")
    return flags


def sampler_table() -> str:
    """The registry as a text table, for the epilog of a command's --help."""
    rows = [("name", "calls (10 steps)", "noise", "default steps", "spacing", "method")]
    for name, spec in SAMPLERS.items():
        rows.append(
            (
                name + (" *" if name == DEFAULT_SAMPLER else ""),
                str(spec.calls(10, False)),
                "yes" if spec.stochastic else "no",
                "all T" if spec.default_steps is None else str(spec.default_steps),
                spec.spacing.value,
                f"{spec.title} ({spec.reference})",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["samplers (--sampler NAME; * the default):"]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, r[-1]]))
    return "\n".join(lines)


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--sampler``, ``--steps``, ``--spacing`` and the options' flags to ``p``."""
    g = p.add_argument_group("sampler (docs/samplers.md)")
    g.add_argument(
        "--sampler",
        choices=tuple(SAMPLERS),
        default=None,
        metavar="NAME",
        help=f"{', '.join(SAMPLERS)} (default: {DEFAULT_SAMPLER}; the table below)",
    )
    g.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampling steps, 1..T, picked among the model's timesteps by --spacing (default: "
        "the sampler's default steps, at most T)",
    )
    g.add_argument(
        "--spacing",
        choices=tuple(s.value for s in Spacing),
        default=None,
        help="which of the model's timesteps --steps picks: even (evenly spaced), logsnr "
        "(uniform in log-SNR), karras (Karras et al.'s sigma spacing, rho = 7) (default: the "
        "sampler's: "
        + ", ".join(f"{n} {s.spacing.value}" for n, s in SAMPLERS.items() if s.spacing != "even")
        + ", even for the others)",
    )
    for opt_name, users in option_flags().items():
        flag = "--" + opt_name.replace("_", "-")
        helps = "; ".join(f"{s}: {o.help} ({o.describe()})" for s, o in users)
        kind = users[0][1].kind
        if kind is bool:
            g.add_argument(
                flag,
                dest=f"option_{opt_name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=helps,
            )
        else:
            g.add_argument(
                flag, dest=f"option_{opt_name}", type=kind, default=None, metavar="X", help=helps
            )


def choose_sampler(args: argparse.Namespace, diffusion: Diffusion) -> SamplerChoice:
    """The sampler the flags ask for, for ``diffusion``'s model; an option flag the sampler does
    not take is an error naming the flag and the samplers that take it."""
    name = args.sampler or DEFAULT_SAMPLER
    options: dict[str, Any] = {}
    for opt_name, users in option_flags().items():
        value = getattr(args, f"option_{opt_name}", None)
        if value is None:
            continue
        takers = [s for s, _ in users]
        if name not in takers:
            raise ValueError(
                f"--{opt_name.replace('_', '-')} applies to --sampler {' or '.join(takers)}, "
                f"not to {name}"
            )
        options[opt_name] = value
    return diffusion.choose_sampler(name, args.steps, args.spacing, **options)


def sampler_flags_given(args: argparse.Namespace) -> list[str]:
    """The sampler flags set on the command line (``--sampler``, ``--steps``, ``--spacing``,
    an option's flag), as written."""
    given = [
        f"--{k}" for k in ("sampler", "steps", "spacing") if getattr(args, k, None) is not None
    ]
    for opt_name in option_flags():
        if getattr(args, f"option_{opt_name}", None) is not None:
            given.append("--" + opt_name.replace("_", "-"))
    return given
