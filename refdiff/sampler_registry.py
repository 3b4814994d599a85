"""What refdiff knows about a sampler, as one frozen value: :class:`SamplerSpec`.

Each sampler is registered once, in :data:`refdiff.SAMPLERS` (filled by :mod:`refdiff.samplers`),
with its function, the paper it implements, its plan (the per-step tables of
:mod:`refdiff.plans`, where its update is a fixed linear combination), the network calls it makes
for N steps, whether it draws noise, the step spacing and number of steps it is at its best on,
its options with their types, ranges and defaults, and its order of convergence as measured in
docs/samplers.md. The command line, the runtime, the quality sweep and the demo read the registry;
none of them lists sampler names of its own.

A :class:`SamplerChoice` is a sampler chosen for one model (:meth:`refdiff.Diffusion.choose_sampler`):
the entry, the steps, the spacing and the checked options, resolved once where the choice enters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._array import Array
from ._checks import check_bool, check_int, check_number
from ._enums import Spacing

__all__ = ["Option", "SamplerChoice", "SamplerSpec"]


@dataclass(frozen=True)
class Option:
    """One option a sampler takes beyond the settings every sampler shares.

    Parameters
    ----------
    name : str
        The keyword the sampler function takes (``eta``).
    kind : type
        ``float``, ``int`` or ``bool``.
    default : float, int or bool
        The value when none is given; checked like a given one.
    help : str
        One line for help pages (``refdiff sample --help``).
    minimum, maximum : float, optional
        The inclusive range of a number.
    """

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in (float, int, bool):
            raise TypeError(f"option {self.name!r}: kind must be float, int or bool")
        self.check(self.default, "the default of")

    def check(self, value: Any, where: str = "") -> Any:
        """``value`` converted to this option's type, if it has that type and lies in range; a
        ``TypeError``/``ValueError`` naming the option otherwise."""
        name = f"{where} option {self.name!r}".strip() if where else f"option {self.name!r}"
        if self.kind is bool:
            return check_bool(value, name)
        if self.kind is int:
            return check_int(value, name, minimum=self.minimum, maximum=self.maximum)  # type: ignore[arg-type]
        return check_number(value, name, minimum=self.minimum, maximum=self.maximum)

    def describe(self) -> str:
        """``float >= 0, default 0.0``-like text for help pages."""
        if self.kind is bool:
            rng = "true or false"
        elif self.minimum is not None and self.maximum is not None:
            rng = f"{self.kind.__name__} in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            rng = f"{self.kind.__name__} >= {self.minimum:g}"
        else:
            rng = self.kind.__name__
        return f"{rng}, default {self.default}"


def one_call_per_step(steps: int, zero_terminal_snr: bool = False) -> int:
    """N network calls for N steps."""
    return steps


@dataclass(frozen=True, eq=False)
class SamplerSpec:
    """A registered sampler (see the module docstring).

    Attributes
    ----------
    name : str
        The registry name (``refdiff sample --sampler NAME``).
    function : callable
        The public sampler function ``(schedule, denoiser, shape, *, <options>, **settings)``.
    title, reference : str
        What it is and the paper and algorithm it implements.
    plan : callable or None
        ``plan(schedule, *, prediction, variance, clip_denoised, data_range, **options) -> Plan``
        where the update is a fixed linear combination (:mod:`refdiff.plans`); None for a sampler
        that needs more than a plan (Heun's second evaluation).
    loop : callable or None
        For a sampler without a plan: ``loop(schedule, denoiser, shape, **settings, **options)``
        runs it (the shared settings of :func:`refdiff.ddpm_sample`).
    stochastic : bool
        Whether it draws noise after x_T with its default options.
    spacing : Spacing
        The step spacing it is at its best on (docs/samplers.md).
    default_steps : int or None
        The steps it runs when none are given (None: all the model's T steps).
    order : float or None
        Its order of convergence on the probability-flow ODE as measured in docs/samplers.md
        (None for the stochastic ones).
    options : tuple of Option
        The options it takes beyond the settings every sampler shares.
    calls : callable
        ``calls(steps, zero_terminal_snr) -> int``, the network calls of a run.
    """

    name: str
    function: Callable[..., Array]
    title: str
    reference: str
    plan: Callable[..., Any] | None
    stochastic: bool
    spacing: Spacing = Spacing.EVEN
    default_steps: int | None = 20
    order: float | None = None
    options: tuple[Option, ...] = ()
    calls: Callable[[int, bool], int] = field(default=one_call_per_step)
    loop: Callable[..., Array] | None = None

    def __post_init__(self) -> None:
        if (self.plan is None) == (self.loop is None):
            raise ValueError(f"sampler {self.name!r} needs exactly one of a plan and a loop")
        names = self.option_names
        if len(set(names)) != len(names):
            raise ValueError(f"sampler {self.name!r} declares an option twice: {names}")

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option of this sampler: the given ones checked, the rest at their defaults. An
        option it does not take is a ``TypeError`` that names the options it does take."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            takes = ", ".join(self.option_names) or "no options"
            raise TypeError(
                f"the {self.name!r} sampler takes no option {', '.join(map(repr, unknown))} "
                f"(it takes: {takes})"
            )
        return {
            o.name: o.check(options[o.name], f"the {self.name!r} sampler's")
            if o.name in options
            else o.default
            for o in self.options
        }

    def network_calls(self, steps: int, *, zero_terminal_snr: bool = False) -> int:
        """The network calls of a run of ``steps`` steps (Heun: 2·steps - 1, others: steps)."""
        steps = check_int(steps, "steps", minimum=1)
        return int(self.calls(steps, bool(zero_terminal_snr)))

    def steps_for_calls(self, calls: int, *, zero_terminal_snr: bool = False) -> int:
        """The most steps whose run fits in ``calls`` network calls (at least 1)."""
        calls = check_int(calls, "a budget of network calls", minimum=1)
        steps = 1
        while self.calls(steps + 1, zero_terminal_snr) <= calls:
            steps += 1
        return steps

    def summary(self) -> str:
        """One line for help pages: the title, the reference, calls and noise."""
        per = self.calls(10, False)
        calls = "1 call per step" if per == 10 else f"{per} calls for 10 steps"
        noise = "stochastic" if self.stochastic else "deterministic"
        return f"{self.title} ({self.reference}); {calls}, {noise}"

    def __repr__(self) -> str:
        return f"SamplerSpec({self.name!r}: {self.summary()})"


@dataclass(frozen=True, eq=False)
class SamplerChoice:
    """A sampler chosen for one model, made by :meth:`refdiff.Diffusion.choose_sampler`, which
    checks everything once.

    Parameters
    ----------
    spec : SamplerSpec
        The sampler's registry entry.
    steps : int
        The sampling steps, 1 … T.
    spacing : Spacing
        How the steps are spread over the model's T (:func:`refdiff.select_timesteps`).
    options : mapping
        Every option of the sampler, checked, defaults filled in (held read-only).
    zero_terminal_snr : bool
        Whether the model's schedule ends at ᾱ = 0 (it changes Heun's network calls).
    """

    spec: SamplerSpec
    steps: int
    spacing: Spacing
    options: Mapping[str, Any]
    zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def network_calls(self) -> int:
        """The network calls one sample's run makes."""
        return self.spec.network_calls(self.steps, zero_terminal_snr=self.zero_terminal_snr)

    def describe(self) -> str:
        """``dpmpp_2m_sde, 20 steps (even spacing), eta=1.0``."""
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"{self.spec.name}, {self.steps} steps ({self.spacing.value} spacing){opts}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: what a sample file or a generator's metadata records."""
        return {
            "sampler": self.spec.name,
            "steps": self.steps,
            "spacing": self.spacing.value,
            "options": dict(self.options),
        }
