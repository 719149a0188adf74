"""Compile a graph in a shape environment of its own (used by every shim, torch 2.5 - 2.15).

Inside a Dynamo backend, the example inputs and the graph's metadata carry Dynamo's symbolic
sizes. Compiling against them lets Inductor add guards and symbols to Dynamo's ``ShapeEnv``: a
compile specialised for one batch size then pins the batch symbol for the whole frame (Dynamo
re-traces for the next size), and a general compile can leave a symbol without a source that
guard building later rejects ("sources must not be empty for symbol sN"). A loading process, which
compiles nothing, never adds those guards, so the two processes would also disagree.

:func:`isolated_inputs` runs one compile against a copy of Dynamo's ``ShapeEnv`` (what Dynamo knew
about the symbols when it called the backend, in containers of its own), a ``FakeTensorMode`` of
that copy and fake inputs built from the graph's symbolic input sizes, with the batch symbol
replaced by its value for a specialised compile, inside a ``TracingContext`` of that mode.
Whatever the compile learns stays in the copy: Dynamo's environment is never touched.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torchshim.errors import UnsupportedGraphError
from torchshim.shims._protocol import GraphInputs, IsolatedCompile

__all__ = [
    "IsolatedCompile",
    "canonical_code",
    "describe_graph_inputs",
    "install_guards",
    "isolated_inputs",
    "tensorified_floats",
]


def _placeholders(graph: Any) -> list[Any]:
    nodes = getattr(getattr(graph, "graph", None), "nodes", ())
    return [n for n in nodes if n.op == "placeholder"]


def _symbolic_view(node: Any, example: Any) -> Any:
    """What carries the symbolic sizes of one input: the example itself when it is symbolic
    (a SymInt/SymFloat, or a FakeTensor with symbolic sizes), else the placeholder's metadata."""
    import torch

    if isinstance(example, (torch.SymInt, torch.SymFloat)):
        return example
    meta = None
    if node is not None:
        meta = node.meta.get("example_value", node.meta.get("val"))
    if isinstance(example, torch.Tensor):
        if _has_symbols(example):
            return example
        if isinstance(meta, torch.Tensor) and meta.dim() == example.dim():
            return meta
        return example
    if isinstance(meta, (torch.SymInt, torch.SymFloat)) and isinstance(example, (int, float)):
        return meta
    return example


def _is_symbolic(value: Any) -> bool:
    import torch

    return isinstance(value, (torch.SymInt, torch.SymFloat)) and bool(value.node.expr.free_symbols)


def _has_symbols(tensor: Any) -> bool:
    return any(_is_symbolic(v) for v in (*tensor.shape, *tensor.stride(), tensor.storage_offset()))


def _tensor_exprs(tensor: Any) -> list[Any]:
    return [*tensor.shape, *tensor.stride(), tensor.storage_offset()]


def _symbols_in_order(views: Sequence[Any]) -> tuple[list[Any], list[Any], Any]:
    """Size symbols and float symbols in order of first appearance, and the batch symbol: the one
    that is a whole leading dimension of the first tensor input that has a symbolic one."""
    import torch

    sizes: list[Any] = []
    floats: list[Any] = []
    batch = None

    def add(value: Any, into: list[Any]) -> None:
        if _is_symbolic(value):
            for sym in sorted(value.node.expr.free_symbols, key=str):
                if sym not in sizes and sym not in floats:
                    into.append(sym)

    for view in views:
        if isinstance(view, torch.SymFloat):
            add(view, floats)
        elif isinstance(view, torch.SymInt):
            add(view, sizes)
        elif isinstance(view, torch.Tensor):
            leading: Any = view.shape[0] if view.dim() > 0 else None
            if batch is None and _is_symbolic(leading):
                expr = leading.node.expr
                if len(expr.free_symbols) == 1 and expr == next(iter(expr.free_symbols)):
                    batch = expr
            for value in _tensor_exprs(view):
                add(value, sizes)
    if batch is None and sizes:
        batch = sizes[0]
    return sizes, floats, batch


def _batch_position(views: Sequence[Any], batch: Any) -> tuple[int, int | None] | None:
    """Where the batch size can be read at call time: ``(input, None)`` for a SymInt input equal
    to it, ``(input, dim)`` for a tensor dimension equal to it; the first such place."""
    import torch

    if batch is None:
        return None
    for index, view in enumerate(views):
        if isinstance(view, torch.SymInt) and _is_symbolic(view) and view.node.expr == batch:
            return index, None
        if isinstance(view, torch.Tensor):
            sizes: list[Any] = list(view.shape)
            for dim, size in enumerate(sizes):
                if _is_symbolic(size) and size.node.expr == batch:
                    return index, dim
    return None


def tensorified_floats(graph: Any) -> list[str]:
    """Names of the Python-float inputs Dynamo turned into 0-d tensors (torch >= 2.6 traces floats
    that way unless ``specialize_float`` is set): their fakes remember the float's symbol as
    ``item_memo``, which is how Dynamo names them when asked to specialise them."""
    names: list[str] = []
    for node in _placeholders(graph):
        memo = getattr(node.meta.get("example_value"), "item_memo", None)
        expr = getattr(getattr(memo, "node", None), "_expr", None)
        name = getattr(expr, "name", None)
        if isinstance(name, str):
            names.append(name)
    return names


def canonical_code(graph: Any, example_inputs: Sequence[Any]) -> str:
    """The graph's code with its input symbols renamed by position (``s33`` -> ``__sym0``), so
    that two processes which traced the same graph but named its sizes differently agree."""
    import re

    code = str(getattr(graph, "code", graph))
    nodes = _placeholders(graph)
    views = [
        _symbolic_view(nodes[i] if i < len(nodes) else None, ex)
        for i, ex in enumerate(example_inputs)
    ]
    sizes, floats, _batch = _symbols_in_order(views)
    names = {str(sym): f"__sym{index}" for index, sym in enumerate([*sizes, *floats])}
    if not names:
        return code
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    return pattern.sub(lambda m: names[m.group(1)], code)


def describe_graph_inputs(graph: Any, example_inputs: Sequence[Any]) -> GraphInputs:
    nodes = _placeholders(graph)
    views = [
        _symbolic_view(nodes[i] if i < len(nodes) else None, ex)
        for i, ex in enumerate(example_inputs)
    ]
    sizes, floats, batch = _symbols_in_order(views)
    for name in tensorified_floats(graph):
        if name not in floats:
            floats.append(name)
    return GraphInputs(
        size_symbols=tuple(str(s) for s in sizes),
        float_symbols=tuple(dict.fromkeys(str(s) for s in floats)),
        batch_symbol=None if batch is None else str(batch),
        batch_position=_batch_position(views, batch),
    )


def _backed_values(shape_env: Any) -> Any:
    # torch >= 2.13 renames var_to_val (backed symbols' example values) to backed_var_to_val and
    # warns on the old name.
    values = getattr(shape_env, "backed_var_to_val", None)
    return shape_env.var_to_val if values is None else values


def _clone_shape_env(old: Any) -> Any:
    """A ShapeEnv that knows what Dynamo's knew when it called the backend (symbols, their example
    values and ranges, replacements, divisibility), and shares none of its containers, so nothing
    learnt while compiling flows back. A fresh environment with new symbols would not know that
    Dynamo already related them (``s3*s4 == 256``) and would guess relations from example values.
    """
    clone = object.__new__(type(old))
    state: dict[str, Any] = {}
    for name, value in vars(old).items():
        if name == "tracked_fakes":
            state[name] = None  # Dynamo's input tracking: nothing to track here
        elif isinstance(value, (dict, list, set)) or type(value).__name__ == "OrderedSet":
            state[name] = copy.copy(value)
        else:
            state[name] = value
    clone.__dict__.update(state)
    return clone


def _find_shape_env(views: Sequence[Any]) -> Any:
    import torch

    for view in views:
        values = _tensor_exprs(view) if isinstance(view, torch.Tensor) else [view]
        for value in values:
            if _is_symbolic(value):
                return value.node.shape_env
    return None


# Guards travel in handles as small JSON trees built from this allow-list (never eval'd text).
_RELATIONS = ("Eq", "Ne", "Lt", "Le", "Gt", "Ge")
_SYMPY_NAMES = (
    *_RELATIONS,
    "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "And", "Or", "Not",
    "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan",
)  # fmt: skip


def _allowed_functions() -> dict[str, Any]:
    import sympy
    from torch.utils._sympy import functions

    allowed = {name: getattr(sympy, name) for name in _SYMPY_NAMES if hasattr(sympy, name)}
    for name in getattr(functions, "__all__", ()):
        allowed[name] = getattr(functions, name)
    return allowed


def _encode(expr: Any, positions: Mapping[Any, int]) -> Any:
    """A JSON tree of ``expr``. An input symbol is written as its position among the graph's
    input symbols (``["arg", 1]``), not its name: Dynamo may name the same size ``s0`` in one
    process and ``s1`` in another (its profile-guided automatic dynamic shapes traced the frame
    in another order), and the guards must apply to the graph, whatever the names."""
    import sympy

    if expr is sympy.true or expr is sympy.false:
        return ["bool", bool(expr)]
    if isinstance(expr, sympy.Symbol):
        if expr in positions:
            return ["arg", positions[expr]]
        return ["sym", expr.name]
    if isinstance(expr, sympy.Integer):
        return ["int", int(expr)]
    if isinstance(expr, sympy.Rational):
        return ["rat", int(expr.p), int(expr.q)]
    if isinstance(expr, sympy.Float):
        return ["float", str(expr)]
    name = type(expr).__name__
    if name not in _allowed_functions():
        raise ValueError(f"guard uses {name}, which torchshim does not carry in handles")
    return [name, *(_encode(arg, positions) for arg in expr.args)]


def _decode(tree: Any, symbols: Mapping[str, Any], ordered: Sequence[Any]) -> Any:
    import sympy

    if not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        raise ValueError(f"malformed guard {tree!r}")
    head, args = tree[0], tree[1:]
    if head == "bool":
        return sympy.true if args[0] else sympy.false
    if head == "arg":
        if not isinstance(args[0], int) or not 0 <= args[0] < len(ordered):
            raise ValueError(f"guard names input symbol {args[0]!r}; this graph has {len(ordered)}")
        return ordered[args[0]]
    if head == "sym":
        if args[0] not in symbols:
            raise ValueError(f"guard names {args[0]}, which this graph's inputs do not carry")
        return symbols[args[0]]
    if head == "int":
        return sympy.Integer(int(args[0]))
    if head == "rat":
        return sympy.Rational(int(args[0]), int(args[1]))
    if head == "float":
        return sympy.Float(str(args[0]))
    function = _allowed_functions().get(head)
    if function is None:
        raise ValueError(f"guard uses {head}, which is not allowed")
    return function(*(_decode(arg, symbols, ordered) for arg in args))


def install_guards(graph: Any, example_inputs: Sequence[Any], guards: Sequence[str]) -> bool:
    """Make the shape environment the graph's inputs come from (Dynamo's, inside a backend) guard
    on ``guards``; ``False`` (and nothing installed) when one of them does not hold for these
    inputs, so the artifact compiled under them must not serve them."""
    if not guards:
        return True
    nodes = _placeholders(graph)
    views = [
        _symbolic_view(nodes[i] if i < len(nodes) else None, ex)
        for i, ex in enumerate(example_inputs)
    ]
    env = _find_shape_env(views)
    if env is None:
        raise ValueError("the graph's inputs carry no symbolic sizes to guard")
    symbols = {str(sym): sym for sym in _backed_values(env)}
    sizes, floats, _batch = _symbols_in_order(views)
    exprs = [_decode(json.loads(text), symbols, [*sizes, *floats]) for text in guards]
    values = _backed_values(env)
    if not all(bool(env.replace(e).xreplace(values)) for e in exprs):
        return False
    for expr in exprs:
        env.evaluate_expr(expr)
    return True


def _bound_symbol(shape_env: Any, sym: Any, lo: int, hi: int) -> tuple[int, int]:
    """Bound ``sym`` to ``[lo, hi]`` in (the copy of) the shape environment: its value range
    (``var_to_range``, torch 2.5 - 2.15) and an example value inside it (the upper end: kernels
    are tuned for the costliest size of the range)."""
    import sympy
    from torch.utils._sympy.value_ranges import ValueRanges

    known = shape_env.var_to_range.get(sym)
    low, high = lo, hi
    if known is not None:
        # an unbounded end is sympy's (or torch's) infinity, which int() refuses in several ways
        with contextlib.suppress(TypeError, ValueError, OverflowError, AttributeError):
            low = max(lo, int(known.lower))
        with contextlib.suppress(TypeError, ValueError, OverflowError, AttributeError):
            high = min(hi, int(known.upper))
    if low > high:
        raise UnsupportedGraphError(
            f"the batch range {lo}-{hi} does not meet the sizes Dynamo allows for it ({known}); "
            "choose a range inside them"
        )
    shape_env.var_to_range[sym] = ValueRanges(low, high)
    _backed_values(shape_env)[sym] = sympy.Integer(high)
    return low, high


def _implied_by_ranges(expr: Any, ranged: Mapping[Any, tuple[int, int]]) -> bool:
    """Whether ``expr`` mentions only bounded symbols and holds for every value of their ranges
    (checked value by value: ranges of batch sizes are short)."""
    if not ranged or not expr.free_symbols or not expr.free_symbols <= set(ranged):
        return False
    if len(expr.free_symbols) != 1:
        return False
    (sym,) = expr.free_symbols
    lo, hi = ranged[sym]
    if hi - lo > 65536:
        return False
    try:
        return all(bool(expr.xreplace({sym: value})) for value in range(lo, hi + 1))
    except TypeError:
        return False


def _pinned_symbols(shape_env: Any) -> dict[Any, Any]:
    """Symbols Dynamo's guards pin to one integer without making it a replacement (on 2.8 GPT-2's
    logits frame guards ``Eq(64*s1, 64*s1 + 64*s2)``, which is ``s2 == 0``)."""
    import sympy

    pinned: dict[Any, Any] = {}
    for guard in shape_env.guards:
        expr = guard.expr
        if not isinstance(expr, sympy.Eq):
            continue
        diff = sympy.expand(expr.lhs - expr.rhs)
        if len(diff.free_symbols) != 1:
            continue
        (sym,) = diff.free_symbols
        poly = diff.as_poly(sym)
        if poly is None or poly.degree() != 1:
            continue
        slope, offset = poly.all_coeffs()
        value = sympy.simplify(-offset / slope)
        if value.is_Integer:
            pinned[sym] = value
    return pinned


def _known_to(shape_env: Any, expr: Any, pinned: Mapping[Any, Any] | None = None) -> bool:
    """Whether Dynamo's environment already proves ``expr`` from what it guards on and the
    symbols' ranges (``ShapeEnv._maybe_evaluate_static``, torch 2.5 - 2.15), so a compile that
    assumed it assumed nothing new: on 2.8, with GPT-2's ``logits_to_keep`` pinned to 0 by
    Dynamo's guard, Inductor's ``192*s1 + 192*s2 >= 2`` for batch 3 follows from ``s1 >= 2``.
    ``pinned``: :func:`_pinned_symbols` of the environment, when already known."""
    if shape_env is None or not expr.free_symbols:
        return False
    try:
        if pinned is None:
            pinned = _pinned_symbols(shape_env)
        known = shape_env._maybe_evaluate_static(expr.xreplace(pinned))
    except Exception:  # a guard it cannot reason about is simply not known
        return False
    return known is not None and bool(known.is_Boolean) and bool(known)


@contextlib.contextmanager
def isolated_inputs(
    graph: Any,
    example_inputs: Sequence[Any],
    bindings: Mapping[str, int],
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> Iterator[IsolatedCompile]:
    import sympy
    import torch
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.sym_node import SymNode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    nodes = _placeholders(graph)
    if nodes and len(nodes) != len(example_inputs):
        raise UnsupportedGraphError(
            f"the graph has {len(nodes)} inputs but {len(example_inputs)} example inputs were "
            "given; pass one example per placeholder, in order"
        )
    views = [_symbolic_view(nodes[i] if nodes else None, ex) for i, ex in enumerate(example_inputs)]
    old_env = _find_shape_env(views)
    sizes, floats, _batch = _symbols_in_order(views)
    positions = {sym: index for index, sym in enumerate([*sizes, *floats])}
    shape_env = ShapeEnv() if old_env is None else _clone_shape_env(old_env)
    values = _backed_values(shape_env)
    bound: dict[Any, Any] = {}
    ranged: dict[Any, tuple[int, int]] = {}
    for sym in list(values):
        if str(sym) in bindings:
            bound[sym] = sympy.Integer(int(bindings[str(sym)]))
            values[sym] = bound[sym]  # example values agree with the specialisation
        elif ranges and str(sym) in ranges:
            ranged[sym] = _bound_symbol(shape_env, sym, *ranges[str(sym)])
    fake_mode = FakeTensorMode(shape_env=shape_env)

    def constant(value: Any, kind: type) -> Any:
        # A SymInt/SymFloat input that is (or became) a constant stays a constant *symbolic*
        # value, as Dynamo hands it over: AOTAutograd turns a plain int input into a fresh
        # symbol (asserting it is positive on torch < 2.13), which would undo a specialisation.
        pytype = int if kind is int else float
        return (torch.SymInt if kind is int else torch.SymFloat)(
            SymNode(sympy.sympify(pytype(value)), shape_env, pytype, pytype(value))
        )

    def convert(value: Any, kind: type, symbolic_input: bool = False) -> Any:
        if not _is_symbolic(value):
            return constant(value, kind) if symbolic_input else kind(value)
        expr = shape_env.replace(value.node.expr).xreplace(bound)
        if not expr.free_symbols:
            return constant(expr, kind) if symbolic_input else kind(expr)
        hint = expr.xreplace(values)
        if hint.free_symbols:
            raise UnsupportedGraphError(
                f"an input has the data-dependent size {expr}, which has no example value; "
                "torchshim can only compile graphs whose input sizes are backed by an example"
            )
        if kind is float:
            return shape_env.create_symfloatnode(expr, hint=float(hint))
        return shape_env.create_symintnode(expr, hint=int(hint))

    inputs: list[Any] = []
    for example, view in zip(example_inputs, views, strict=True):
        if isinstance(view, torch.SymFloat):
            inputs.append(convert(view, float, symbolic_input=True))
        elif isinstance(view, torch.SymInt):
            inputs.append(convert(view, int, symbolic_input=True))
        elif isinstance(view, torch.Tensor):
            size = [convert(v, int) for v in view.shape]
            stride = [convert(v, int) for v in view.stride()]
            offset = convert(view.storage_offset(), int)
            with fake_mode:
                if isinstance(offset, int) and offset == 0:
                    fake = torch.empty_strided(size, stride, dtype=view.dtype, device=view.device)
                else:  # a view into a larger storage: allocate the storage, then view it
                    extent = (
                        offset + 1 + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
                    )
                    base = torch.empty(extent, dtype=view.dtype, device=view.device)
                    fake = base.as_strided(size, stride, offset)
            fake.requires_grad_(bool(getattr(example, "requires_grad", False)))
            inputs.append(fake)
        else:
            inputs.append(example)
    isolated = IsolatedCompile(inputs)
    known = len(shape_env.guards)
    with tracing(TracingContext(fake_mode)):
        yield isolated
    # guards the compile added; symbols a specialisation bound are constants in them, and a
    # guard on a bounded symbol alone that holds across its whole range says nothing new
    learnt = [shape_env.replace(g.expr).xreplace(bound) for g in shape_env.guards[known:]]
    learnt = [expr for expr in learnt if not _implied_by_ranges(expr, ranged)]
    if learnt and old_env is not None:  # and none that Dynamo's own guards already prove
        pinned = _pinned_symbols(old_env)
        learnt = [expr for expr in learnt if not _known_to(old_env, expr, pinned)]
    isolated.guards = list(
        dict.fromkeys(
            json.dumps(_encode(expr, positions), separators=(",", ":"))
            for expr in learnt
            if expr.free_symbols
        )
    )
