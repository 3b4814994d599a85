"""Counter-based Gaussian noise as ONNX nodes: :mod:`refdiff.noise` inside a graph.

The nodes built here compute, under onnxruntime, the same numbers as
:func:`refdiff.noise.standard_normal` (and the CUDA kernel of :mod:`refdiff.fused`): Philox4x32-10
with key = the 64-bit seed and counter = (quad j, step, index low 32 bits, index high 32 bits),
then the Box–Muller transform in float64 on word pairs (0, 1) and (2, 3) of each quad,

    u = (word + 0.5) / 2**32,   z = sqrt(-2 ln u_a) · (cos 2π u_b, sin 2π u_b),

so a generator graph that draws its own noise gives image i of seed S the noise that
``refdiff sample --seed S`` gives it in Python, whatever the batch. See docs/graph.md.

Only int64 and float64 tensors, and operators that onnxruntime's CPU provider (and so
onnxruntime-web's WASM build and onnxruntime-node) implements for them, are used: Add, Sub, Mul,
Div, Mod, BitwiseAnd, BitwiseXor, Range, Gather, Concat, Split, Reshape, Unsqueeze, Transpose,
Slice, Cast, Log, Sqrt, Sin (cos θ = sin(π/2 - θ): onnxruntime 1.18 has no float64
Cos). The 32x32-bit Philox products are split into 16-bit halves of
the constant so that every intermediate stays below 2**49, and right shifts are divisions of
non-negative values (BitShift is defined for unsigned types only). The int64 ``seed`` and
``indices`` are read as the unsigned 64-bit numbers with the same bits, as the CUDA kernel reads
them: a seed in [2**63, 2**64) (``refdiff.noise.check_seed`` allows it) is passed as
``seed - 2**64``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .builder import GraphBuilder, elem_type

__all__ = ["philox_words", "standard_normal"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10
_2_16, _2_32 = 2**16, 2**32


def _check_builder(g: Any) -> GraphBuilder:
    if not isinstance(g, GraphBuilder):
        raise TypeError(f"g must be a refdiff.graph.GraphBuilder, got {type(g).__name__}")
    return g


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _split_u64(g: GraphBuilder, value: str, name: str) -> tuple[str, str]:
    """(low, high) 32-bit words of an int64 value read as unsigned, each int64 in [0, 2**32)."""
    low = g.op("Mod", value, g.const(_2_32), name=f"{name}_lo")  # fmod=0: the divisor's sign
    rest = g.op("Sub", value, low, name=f"{name}_rest")  # a multiple of 2**32, no overflow
    high = g.op("Div", rest, g.const(_2_32), name=f"{name}_hi")  # exact: floor division
    return low, g.op("Mod", high, g.const(_2_32), name=f"{name}_hi")


def _pairs(values: Sequence[int]) -> np.ndarray:
    """A [2, 1, 1] int64 constant: one value per pair slot, broadcast over [2, B, n_quads]."""
    return np.asarray(values, np.int64).reshape(2, 1, 1)


def _philox_pairs(
    g: GraphBuilder, seed: str, indices: str, step: str, n_quads: int
) -> tuple[str, str]:
    """The Philox4x32-10 output as two int64 [2, B, n_quads] values, (c0, c2) and (c3, c1).

    The state is kept as two pairs of words, A and B, the pair slot first (so that onnxruntime
    broadcasts the per-slot constants over whole rows). On even rounds A = (c0, c2),
    B = (c3, c1); on odd rounds A = (c2, c0), B = (c1, c3). A round is then
    A' = hi(A * M) ^ B ^ K and B' = lo(A * M) with its slots swapped, for multipliers M and
    round keys K ordered like A: both products and both xors of a Philox round in one op each.
    """
    g = _check_builder(g)
    n_quads = _positive_int(n_quads, "n_quads")
    for what, value in (("seed", seed), ("indices", indices), ("step", step)):
        g.check_value(value, what)
    k0, k1 = _split_u64(g, seed, "key")
    lo, hi = _split_u64(g, indices, "index")
    step32 = g.op("Mod", step, g.const(_2_32), name="step32")
    quad = g.op("Range", g.const(0), g.const(n_quads), g.const(1), name="quad")  # [n_quads]
    per_sample = g.const([0, 2])  # [B] -> [1, B, 1]
    lo, hi = (
        g.op("Unsqueeze", v, per_sample, name=n) for v, n in ((lo, "index_lo"), (hi, "index_hi"))
    )
    first, second = g.const(_pairs([1, 0])), g.const(_pairs([0, 1]))
    # (x, y) as x * (1, 0) + y * (0, 1): exact, every word below 2**32
    a = g.op("Add", g.op("Mul", quad, first), g.op("Mul", lo, second), name="ctr_a")
    b = g.op("Add", g.op("Mul", hi, first), g.op("Mul", step32, second), name="ctr_b")

    # Round keys ((k0, k1) + r (W0, W1)) mod 2**32, ordered (k1, k0) on even rounds: [2, 1, 1]
    keys = g.op("Concat", *(g.op("Unsqueeze", k, g.const([0])) for k in (k0, k1)), axis=0)
    order = [[1, 0] if r % 2 == 0 else [0, 1] for r in range(_ROUNDS)]
    weyl = [[r * (_W0, _W1)[i] for i in o] for r, o in enumerate(order)]
    round_keys = g.op(
        "Mod",
        g.op("Add", g.op("Gather", keys, g.const(order)), g.const(weyl)),
        g.const(_2_32),
        name="round_keys",
    )
    round_keys = g.op(
        "Split",
        g.op("Reshape", round_keys, g.const([2 * _ROUNDS, 1, 1])),
        g.const([2] * _ROUNDS),
        axis=0,
        outputs=_ROUNDS,
        name="round_key",
    )
    swap = g.const([1, 0])
    for r in range(_ROUNDS):
        m = (_M0, _M1) if r % 2 == 0 else (_M1, _M0)
        x = g.op("Mul", a, g.const(_pairs([v % _2_16 for v in m])), name="prod_lo")  # < 2**48
        y = g.op("Mul", a, g.const(_pairs([v // _2_16 for v in m])), name="prod_hi")  # < 2**48
        # a*m = y * 2**16 + x: high word floor((y + floor(x / 2**16)) / 2**16), low word
        # (x + (y mod 2**16) * 2**16) mod 2**32; every term below 2**49.
        high = g.op(
            "Div", g.op("Add", y, g.op("Div", x, g.const(_2_16))), g.const(_2_16), name="mul_hi"
        )
        low = g.op(
            "BitwiseAnd",
            g.op("Add", x, g.op("Mul", g.op("BitwiseAnd", y, g.const(_2_16 - 1)), g.const(_2_16))),
            g.const(_2_32 - 1),
            name="mul_lo",
        )
        a, b = (
            g.op("BitwiseXor", g.op("BitwiseXor", high, b), round_keys[r], name="ctr_a"),
            g.op("Gather", low, swap, axis=0, name="ctr_b"),
        )
    return a, b  # after an even number of rounds: A = (c0, c2), B = (c3, c1)


def philox_words(g: GraphBuilder, seed: str, indices: str, step: str, n_quads: int) -> str:
    """Philox4x32-10 output words of ``n_quads`` counters per sample, as ONNX nodes.

    Word w of quad j of sample b is word w of ``refdiff.noise.philox4x32`` at counter
    (j, step, indices[b] mod 2**32, indices[b] div 2**32) and key (seed mod 2**32,
    seed div 2**32): the words :func:`refdiff.noise.uniform_open` turns into uniforms.

    Parameters
    ----------
    g : GraphBuilder
        The graph (main graph or a Loop body) to add the nodes to.
    seed : str
        int64 scalar value: the Philox key (read as unsigned 64 bits).
    indices : str
        int64 [B] value: the global sample indices (read as unsigned 64 bits).
    step : str
        int64 scalar value in [0, 2**32): the counter's step word (the timestep index, or
        :data:`refdiff.noise.PRIOR_STEP` for x_T); taken mod 2**32.
    n_quads : int
        Counters per sample (static).

    Returns
    -------
    str
        int64 [B, n_quads, 4]: the four 32-bit words of each quad, in [0, 2**32).
    """
    with _check_builder(g).scope("philox"):
        a, b = _philox_pairs(g, seed, indices, step, n_quads)
        words = g.op("Gather", g.op("Concat", a, b, axis=0), g.const([0, 3, 1, 2]), axis=0)
        return g.op("Transpose", words, perm=[1, 2, 0], name="words")


def standard_normal(
    g: GraphBuilder,
    seed: str,
    indices: str,
    step: str,
    shape: Sequence[int],
    *,
    dtype: Any = np.float32,
) -> str:
    """Standard normal noise ``[B, *shape]`` as ONNX nodes, equal to
    ``refdiff.noise.standard_normal(seed, indices, step, shape, xp=np, dtype=dtype)``.

    Parameters
    ----------
    g : GraphBuilder
        The graph (main graph or a Loop body) to add the nodes to.
    seed : str
        int64 scalar value: the seed, in [0, 2**63) (a seed in [2**63, 2**64) as
        ``seed - 2**64``).
    indices : str
        int64 [B] value: the global sample indices, >= 0.
    step : str
        int64 scalar value in [0, 2**32): the sampler step; x_T uses
        :data:`refdiff.noise.PRIOR_STEP`. A runtime value: in a Loop body, say, gathered from a
        table by the iteration number.
    shape : sequence of int
        The static shape of one sample, e.g. (C, H, W).
    dtype : numpy.float32 or numpy.float64
        The output's dtype. The Gaussians are computed in float64 either way and float32 is
        their cast, as in :func:`refdiff.noise.standard_normal`.

    Returns
    -------
    str
        The noise, ``[B, *shape]`` of ``dtype``.
    """
    g = _check_builder(g)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of positive ints, e.g. (C, H, W), got {shape!r}")
    shape = tuple(_positive_int(s, f"each dimension of shape {tuple(shape)!r}") for s in shape)
    try:
        out_type = None if dtype is None else np.dtype(dtype)
    except TypeError:
        out_type = None
    if out_type not in (np.float32, np.float64):
        raise ValueError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}")
    d = math.prod(shape)
    n_quads = -(-d // 4)  # Box-Muller on pairs: d rounded up to even, then to a multiple of 4
    with g.scope("noise"):
        a, b = _philox_pairs(g, seed, indices, step, n_quads)  # (c0, c2), (c3, c1)

        def uniform(words: str) -> str:  # exact: (word + 0.5) / 2**32
            as_float = g.op("Cast", words, to=elem_type(np.float64))
            return g.op(
                "Mul", g.op("Add", as_float, g.const(0.5)), g.const(2.0**-32), name="uniform"
            )

        # Box-Muller on the word pairs (c0, c1) and (c2, c3): [2, B, n_quads] each
        radius = g.op("Sqrt", g.op("Mul", g.const(-2.0), g.op("Log", uniform(a))), name="radius")
        u_b = uniform(g.op("Gather", b, g.const([1, 0]), axis=0))
        theta = g.op("Mul", g.const(2.0 * math.pi), u_b, name="theta")
        # cos θ as sin(π/2 - θ): the CPU provider of onnxruntime 1.18 (the oldest refdiff
        # supports) has no float64 Cos; the subtraction adds at most ~3e-16 to the argument
        angles = [g.op("Sub", g.const(math.pi / 2), theta, name="theta_cos"), theta]
        angles = g.op("Concat", *(g.op("Unsqueeze", v, g.const([0])) for v in angles), axis=0)
        z = g.op("Mul", g.op("Unsqueeze", radius, g.const([0])), g.op("Sin", angles), name="z")
        # [cos/sin, pair, B, n_quads] -> [B, n_quads, pair, cos/sin]: z_4j .. z_4j+3 of sample b
        z = g.op(
            "Reshape", g.op("Transpose", z, perm=[2, 3, 1, 0]), g.const([0, 4 * n_quads]), name="z"
        )
        if 4 * n_quads != d:
            z = g.op("Slice", z, g.const([0]), g.const([d]), g.const([1]), name="z")
        z = g.op("Reshape", z, g.const([0, *shape]), name="normal")
        if out_type == np.float32:
            z = g.op("Cast", z, to=elem_type(np.float32), name="normal_f32")
        return z
