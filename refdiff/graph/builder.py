"""Building ONNX graphs in code: a thin, checked layer over :mod:`onnx.helper`.

A :class:`GraphBuilder` grows one graph (the main graph, or the body of a ``Loop`` or ``If``) node
by node. It hands out value names that are unique across the whole model (so a body may read any
value of the graphs around it, and nothing shadows anything), keeps constants as deduplicated
initializers of the main graph, refuses a node that reads a value its graph cannot see, and
finishes with a checked :class:`onnx.ModelProto` at a fixed opset (18 by default: the opset of
refdiff's denoiser export).

An existing model (a refdiff denoiser file) is added once with :meth:`GraphBuilder.add_model`
(its weights become initializers of the graph it is added to: the Loop body that calls it, say)
and then called any number of times, there or in that graph's bodies, with
:meth:`GraphBuilder.call`: each call copies its nodes with every value renamed under a fresh
prefix, so calls never collide with each other or with the graph around them.

>>> g = GraphBuilder("double")                                          # doctest: +SKIP
>>> x = g.input("x", np.float32, ("batch", 3))                          # doctest: +SKIP
>>> g.output(g.op("Mul", x, g.const(2.0, np.float32)), "y", dtype=np.float32)  # doctest: +SKIP
>>> model = g.to_model(metadata={"what": "doubles x"})                  # doctest: +SKIP

This module imports onnx (the ``onnx`` extra), never torch.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._deps import require
from .._version import __version__

onnx = require("onnx", "onnx", "building ONNX graphs (refdiff.graph)")
helper = require("onnx.helper", "onnx", "building ONNX graphs (refdiff.graph)")
numpy_helper = require("onnx.numpy_helper", "onnx", "building ONNX graphs (refdiff.graph)")
inliner = require("onnx.inliner", "onnx", "building ONNX graphs (refdiff.graph)")

__all__ = ["OPSET", "EmbeddedModel", "GraphBuilder"]

#: The default-domain opset of the graphs built here (that of refdiff's denoiser export).
OPSET = 18

Dim = int | str | None


def elem_type(dtype: Any) -> int:
    """The ONNX element type (``onnx.TensorProto.FLOAT``, ...) of a NumPy dtype-like or enum."""
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        if dtype not in onnx.TensorProto.DataType.values() or dtype == 0:
            raise ValueError(f"{dtype} is not an ONNX tensor element type")
        return dtype
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        raise TypeError(
            f"dtype must be a NumPy dtype or an ONNX element type, got {dtype!r}"
        ) from None


def _shape(shape: Sequence[Dim] | None) -> list[Dim] | None:
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of ints, names or None, got {shape!r}")
    for d in shape:
        ok_int = isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
        if not (ok_int or d is None or (isinstance(d, str) and d)):
            raise ValueError(
                f"shape {tuple(shape)!r}: each dimension must be an int >= 0, a non-empty name "
                f"(a dynamic dimension) or None (unknown), got {d!r}"
            )
    return [int(d) if isinstance(d, (int, np.integer)) else d for d in shape]


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what} must be a non-empty str, got {name!r}")
    return name


@dataclass(frozen=True)
class EmbeddedModel:
    """A model added to a graph with :meth:`GraphBuilder.add_model`, ready to be called.

    Attributes
    ----------
    prefix : str
        The prefix of its initializers and of every value its calls create.
    input_names, output_names : tuple of str
        Its graph's (required) inputs and outputs, as :meth:`GraphBuilder.call` takes and
        returns them (outputs in the model's order).
    graph : onnx.GraphProto
        Its graph as added (local functions inlined); each call copies and renames it.
    initializers : mapping of str to str
        Its initializers' names -> their names in the graph it was added to.
    owner : GraphBuilder
        The graph it was added to; calls may be made there or in its bodies.
    """

    prefix: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    graph: Any
    initializers: Mapping[str, str]
    owner: Any


class GraphBuilder:
    """Builds one ONNX graph: the main graph, or (from :meth:`subgraph`) a Loop/If body.

    Parameters
    ----------
    name : str
        The graph's name.
    opset : int
        The default-domain opset of the model (:data:`OPSET`, 18, unless told otherwise).

    Notes
    -----
    Value names are unique across the main graph and all its subgraphs. A subgraph sees the
    values of every graph around it (ONNX outer-scope references); a graph never sees the
    values of its subgraphs. Constants are initializers of the main graph, visible everywhere;
    the weights of an added model are initializers of the graph it was added to.
    """

    def __init__(self, name: str = "graph", *, opset: int = OPSET, _parent: Any = None) -> None:
        self.name = _check_name(name, "the graph name")
        self.parent: GraphBuilder | None = _parent
        if _parent is None:
            if isinstance(opset, bool) or not isinstance(opset, int) or opset < 1:
                raise ValueError(f"opset must be a positive int, got {opset!r}")
            self.opset = opset
            self._taken: set[str] = set()
            self._counters: dict[str, itertools.count[int]] = {}
            self._consts: dict[tuple[Any, ...], str] = {}
            self._scope = ""
            self._domains: dict[str, int] = {"": opset}
            self._ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
        else:
            self.opset = _parent.opset
        self._defined: set[str] = set()
        self._initializers: list[Any] = []
        self._nodes: list[Any] = []
        self._inputs: list[Any] = []
        self._input_names: set[str] = set()
        self._outputs: list[Any] = []
        self._value_info: list[Any] = []

    # -- names and scope -----------------------------------------------------------------------

    @property
    def root(self) -> GraphBuilder:
        """The main graph's builder (self for the main graph)."""
        return self if self.parent is None else self.parent.root

    def fresh(self, hint: str) -> str:
        """Reserve and return a value name not used anywhere in the model: the current
        :meth:`scope` + ``hint`` if free, else with ``_1``, ``_2``, ... appended."""
        root = self.root
        hint = root._scope + _check_name(hint, "a name hint")
        name = hint
        counter = root._counters.setdefault(hint, itertools.count(1))
        while name in root._taken:
            name = f"{hint}_{next(counter)}"
        root._taken.add(name)
        return name

    @contextlib.contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        """Within ``with g.scope("noise"):``, the names made for values and nodes (in this
        model, by any of its builders) start with ``noise/``, so they cannot take a name that
        the caller later gives an input or output. Scopes nest."""
        root = self.root
        outer = root._scope
        root._scope = f"{outer}{_check_name(prefix, 'the scope prefix')}/"
        try:
            yield
        finally:
            root._scope = outer

    def _reserve(self, name: str, what: str) -> str:
        name = _check_name(name, what)
        if name in self.root._taken:
            raise ValueError(f"{what} {name!r} is already a value name of this model")
        self.root._taken.add(name)
        return name

    def visible(self, value: str) -> bool:
        """Whether this graph may read ``value``: defined in it or in a graph around it."""
        g: GraphBuilder | None = self
        while g is not None:
            if value in g._defined:
                return True
            g = g.parent
        return False

    def check_value(self, value: Any, what: str = "value") -> str:
        """``value`` itself, or a ValueError saying why this graph cannot read it."""
        if not isinstance(value, str):
            raise TypeError(
                f"{what} must be a value name (str), got {type(value).__name__} {value!r}"
            )
        if not self.visible(value):
            where = "another graph" if value in self.root._taken else "no graph of this model"
            raise ValueError(
                f"{what} {value!r} is not visible in graph {self.name!r}: it is defined in "
                f"{where} (a graph sees its own values and those of the graphs around it)"
            )
        return value

    # -- inputs, constants, nodes, outputs -----------------------------------------------------

    def input(
        self, name: str, dtype: Any, shape: Sequence[Dim] | None = None, *, default: Any = None
    ) -> str:
        """Declare a graph input and return its name.

        Parameters
        ----------
        name : str
            The input's name, used as is (an error if the model already has a value so named).
        dtype : NumPy dtype or ONNX element type
        shape : sequence of (int, str or None), optional
            Fixed sizes, names of dynamic dimensions (``"batch"``) or None (unknown). The whole
            shape None (an unknown rank) only in a body: a main graph's inputs and outputs need
            one.
        default : array-like, optional
            Makes the input optional (main graph only): an initializer of the same name holds
            this value, which a caller may override by feeding the input (onnxruntime's
            overridable initializers). An empty array is the usual "not given" default.
        """
        info = helper.make_tensor_value_info(name, elem_type(dtype), self._io_shape(shape, name))
        if default is not None and self.parent is not None:
            raise ValueError(f"input {name!r}: only a main graph's inputs may have a default")
        name = self._reserve(name, "the input name")
        if default is not None:
            np_dtype = helper.tensor_dtype_to_np_dtype(elem_type(dtype))
            self._initializers.append(numpy_helper.from_array(np.asarray(default, np_dtype), name))
        self._inputs.append(info)
        self._defined.add(name)
        self._input_names.add(name)
        return name

    def const(self, value: Any, dtype: Any = None, *, name: str = "const") -> str:
        """A constant (scalar or array) as an initializer of the main graph; equal constants
        share one initializer.

        Parameters
        ----------
        value : scalar or array-like
        dtype : NumPy dtype, optional
            The constant's dtype. By default the array's own; a Python int is int64, a float
            float64, a bool bool. A value that the dtype cannot hold exactly (2**63 as int64,
            0.1 as an integer type) is an error, never a silent cast.
        name : str
            A hint for the initializer's name.
        """
        if dtype is None and isinstance(value, (bool, int, float)):
            dtype = (
                type(value)
                if isinstance(value, bool)
                else (np.int64 if isinstance(value, int) else np.float64)
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)  # NumPy 1.x: -1 as uint32
                arr = np.asarray(value, dtype=None if dtype is None else np.dtype(dtype))
                exact = (
                    dtype is None
                    or arr.dtype.kind in "fc"
                    or np.array_equal(arr, np.asarray(value), equal_nan=True)
                )
        except (OverflowError, ValueError, TypeError, DeprecationWarning) as exc:
            raise ValueError(f"constant {value!r} does not fit dtype {dtype!r}: {exc}") from None
        if arr.dtype == object or arr.dtype.kind in "USVOM" or not exact:
            raise ValueError(f"constant {value!r} is not exactly representable as {arr.dtype}")
        elem_type(arr.dtype)  # a dtype ONNX has
        root = self.root
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in root._consts:
            tensor = numpy_helper.from_array(arr, root.fresh(name))
            root._initializers.append(tensor)
            root._defined.add(tensor.name)
            root._consts[key] = tensor.name
        return root._consts[key]

    def op(
        self,
        op_type: str,
        *inputs: str | None,
        outputs: int | Sequence[str] = 1,
        name: str | None = None,
        domain: str = "",
        **attributes: Any,
    ) -> Any:
        """Add a node and return its output name (one output) or names (a tuple).

        Parameters
        ----------
        op_type : str
            The operator (``"Add"``, ``"Loop"``, ...).
        *inputs : str or None
            Value names this graph can see; None or ``""`` for an omitted optional input.
        outputs : int or sequence of str
            How many outputs, or one name hint per output.
        name : str, optional
            A hint for the output names (default: the op type in lower case).
        domain : str
            The operator's domain; one other than ``""`` must come from an added model.
        **attributes
            The node's attributes; a :class:`GraphBuilder` value (a Loop or If body) is turned
            into its graph.
        """
        op_type = _check_name(op_type, "op_type")
        if domain not in self.root._domains:
            raise ValueError(
                f"op {op_type!r}: domain {domain!r} has no opset in this model "
                f"(known: {sorted(self.root._domains)})"
            )
        args = [
            "" if v is None or v == "" else self.check_value(v, f"input of {op_type}")
            for v in inputs
        ]
        if isinstance(outputs, int) and not isinstance(outputs, bool):
            if outputs < 1:
                raise ValueError(f"op {op_type!r}: outputs must be >= 1, got {outputs}")
            hints = [name or op_type.lower()] * outputs
        elif isinstance(outputs, Sequence) and not isinstance(outputs, str) and outputs:
            hints = [_check_name(h, f"output name hint of {op_type}") for h in outputs]
        else:
            raise TypeError(
                f"op {op_type!r}: outputs must be a count or name hints, got {outputs!r}"
            )
        outs = [self.fresh(h) for h in hints]
        attrs = {
            k: (v.to_graph() if isinstance(v, GraphBuilder) else v) for k, v in attributes.items()
        }
        node_name = self.fresh(f"{name or op_type.lower()}_node")
        self._nodes.append(
            helper.make_node(op_type, args, outs, node_name, domain=domain or None, **attrs)
        )
        self._defined.update(outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def output(
        self, value: str, name: str | None = None, *, dtype: Any, shape: Sequence[Dim] | None = None
    ) -> str:
        """Declare ``value`` a graph output, named ``name`` (default: its own name).

        A value that this graph does not compute itself (an input, a constant, an outer
        value) or that is already an output goes out through an ``Identity`` node.
        Returns the output's name.
        """
        value = self.check_value(value, "the output value")
        dims = self._io_shape(shape, name or value)
        name = None if name == value else name
        own = value in self._defined and value not in self._input_names
        taken = any(o.name == value for o in self._outputs)
        if name is None and own and not taken:
            out = value
        else:
            out = self._reserve(name, "the output name") if name is not None else self.fresh(value)
            self._nodes.append(
                helper.make_node("Identity", [value], [out], self.fresh(f"{out}_node"))
            )
            self._defined.add(out)
        self._outputs.append(helper.make_tensor_value_info(out, elem_type(dtype), dims))
        return out

    def _io_shape(self, shape: Sequence[Dim] | None, name: str) -> list[Dim] | None:
        if shape is None and self.parent is None:
            raise ValueError(
                f"{name!r}: the inputs and outputs of a main graph need a shape (use a name such "
                "as 'batch' for a dynamic dimension, None for an unknown one); only a body's "
                "may have an unknown rank"
            )
        return _shape(shape)

    def subgraph(self, name: str) -> GraphBuilder:
        """A builder for a body (Loop, If, Scan) that may read this graph's values; pass it (or
        its :meth:`to_graph`) as the node's graph attribute."""
        return GraphBuilder(name, _parent=self)

    # -- models in, models out -----------------------------------------------------------------

    def add_model(self, model: Any, *, prefix: str = "model") -> EmbeddedModel:
        """Add ``model``'s weights to this graph once, for :meth:`call` to run it here or in
        this graph's bodies.

        Add it to the graph that runs it: onnxruntime optimizes a body's nodes whose weights
        are initializers of the body itself (a denoiser called in a Loop body, say) as it
        optimizes the file on its own, but not those reading weights of an outer graph.

        Parameters
        ----------
        model : onnx.ModelProto
            A loaded model (external data loaded: ``onnx.load(path)``), at this builder's
            default-domain opset. Local functions are inlined; other domains join the model's
            opset imports.
        prefix : str
            A hint for the prefix of its initializers and of its calls' values.
        """
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__}")
        root = self.root
        opsets = {o.domain or "": o.version for o in model.opset_import}
        if opsets.get("", None) != root.opset:
            raise ValueError(
                f"the model uses opset {opsets.get('')} of the default domain and this graph is "
                f"built at opset {root.opset}; build the graph at the model's opset "
                f"(GraphBuilder(opset={opsets.get('')})) or convert the model "
                "(onnx.version_converter.convert_version)"
            )
        for domain, version in opsets.items():
            if root._domains.get(domain, version) != version:
                raise ValueError(
                    f"the model uses opset {version} of domain {domain!r}, this graph already "
                    f"uses version {root._domains[domain]}"
                )
        if len(model.functions):
            model = inliner.inline_local_functions(model)
        graph = model.graph
        if len(graph.sparse_initializer):
            raise ValueError(
                "models with sparse initializers are not supported; densify them first"
            )
        external = [
            t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        if external:
            raise ValueError(
                f"the model's initializers {external[:3]} are in external files: load the model "
                "with onnx.load(path) (which reads them) before adding it"
            )
        prefix = _check_name(prefix, "prefix")
        base = root.fresh(prefix)
        renamed = {}
        for tensor in graph.initializer:
            new = onnx.TensorProto()
            new.CopyFrom(tensor)
            new.name = root.fresh(f"{base}/{tensor.name}")
            renamed[tensor.name] = new.name
            self._initializers.append(new)
            self._defined.add(new.name)
        root._domains.update(opsets)
        root._ir_version = max(root._ir_version, model.ir_version)
        inputs = tuple(i.name for i in graph.input if i.name not in renamed)
        return EmbeddedModel(
            prefix=base,
            input_names=inputs,
            output_names=tuple(o.name for o in graph.output),
            graph=graph,
            initializers=renamed,
            owner=self,
        )

    def call(self, model: EmbeddedModel, **inputs: str) -> Any:
        """Run an added model on values of this graph; returns its output name (one output) or
        names (a tuple, in the model's order).

        ``inputs`` maps each of ``model.input_names`` to a value name, e.g.
        ``g.call(denoiser, x=x, t=t)``.
        """
        if not isinstance(model, EmbeddedModel):
            raise TypeError(f"call takes a model from add_model, got {type(model).__name__}")
        scope: GraphBuilder | None = self
        while scope is not None and scope is not model.owner:
            scope = scope.parent
        if scope is None:
            raise ValueError(
                f"{model.prefix!r} was added to graph {model.owner.name!r}, which graph "
                f"{self.name!r} cannot see: call a model in the graph it was added to or in "
                "its bodies"
            )
        missing = [n for n in model.input_names if n not in inputs]
        unknown = sorted(set(inputs) - set(model.input_names))
        if missing or unknown:
            raise ValueError(
                f"call of {model.prefix!r}: the model's inputs are {list(model.input_names)}; "
                f"missing {missing}, unknown {unknown}"
            )
        mapping = dict(model.initializers)
        for key, value in inputs.items():
            mapping[key] = self.check_value(value, f"input {key!r} of {model.prefix!r}")
        call_prefix = self.fresh(f"{model.prefix}/call")
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        _rename(graph, mapping, lambda n: self.fresh(f"{call_prefix}/{n}"))
        self._nodes.extend(graph.node)
        produced = {v for n in graph.node for v in n.output}
        self._value_info.extend(v for v in graph.value_info if v.name in produced)
        outs = tuple(mapping[o] for o in model.output_names)
        self._defined.update(outs)
        self._defined.update(mapping[v] for n in model.graph.node for v in n.output if v)
        return outs[0] if len(outs) == 1 else outs

    def to_graph(self) -> Any:
        """This graph as an ``onnx.GraphProto``, with its own initializers."""
        return helper.make_graph(
            self._nodes,
            self.name,
            self._inputs,
            self._outputs,
            self._initializers,
            value_info=self._value_info,
        )

    def to_model(self, *, metadata: Mapping[str, str] | None = None, doc_string: str = "") -> Any:
        """The checked model (``onnx.checker.check_model(full_check=True)``) of this main graph.

        Parameters
        ----------
        metadata : mapping of str to str, optional
            The model's ``metadata_props``.
        doc_string : str
            The model's description.
        """
        if self.parent is not None:
            raise ValueError(
                f"graph {self.name!r} is a subgraph; make the model from the main graph"
            )
        if not self._outputs:
            raise ValueError(f"graph {self.name!r} has no outputs")
        meta = dict(metadata or {})
        bad = {k: v for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"metadata keys and values must be str, got {bad!r}")
        model = helper.make_model(
            self.to_graph(),
            opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(self._domains.items())],
            ir_version=self._ir_version,
            producer_name="refdiff",
            producer_version=__version__,
            doc_string=doc_string,
        )
        helper.set_model_props(model, meta)
        onnx.checker.check_model(model, full_check=True)
        return model


def _subgraphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _rename(graph: Any, mapping: dict[str, str], fresh: Any) -> None:
    """Rename, in place, every value of ``graph`` and its subgraphs: names in ``mapping`` to
    their mapped names, every other name that the graph defines to ``fresh(name)``; node names
    too. ``mapping`` grows with the new names (one flat map: a name means one value throughout,
    as ONNX's scoping of a valid model allows)."""

    def new(name: str) -> str:
        if not name:
            return name
        if name not in mapping:
            mapping[name] = fresh(name)
        return mapping[name]

    def walk(g: Any) -> None:
        for value in [*g.input, *g.output, *g.value_info]:
            value.name = new(value.name)
        for tensor in g.initializer:
            tensor.name = new(tensor.name)
        for node in g.node:
            node.name = fresh(node.name or node.op_type.lower())
            node.input[:] = [new(v) for v in node.input]
            node.output[:] = [new(v) for v in node.output]
            for sub in _subgraphs(node):
                walk(sub)

    walk(graph)
