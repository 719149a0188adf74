"""What the adaptors and the backend read off a graph: its digest, its inputs' size symbols,
parameters it reads as constants."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from torchshim.shims import GraphInputs, active

__all__ = ["graph_digest", "graph_inputs", "parameter_constants"]


def graph_digest(graph: Any, example_inputs: Sequence[Any]) -> str:
    """A key for a compile when the caller gives none: the graph's code with its input symbols
    renamed by position, and its inputs' dtypes, devices and static sizes (symbolic sizes as
    ``sym``), so every batch size of one trace, in any process, gets the same key."""
    nodes = [
        n for n in getattr(getattr(graph, "graph", None), "nodes", ()) if n.op == "placeholder"
    ]
    text = [active().module.canonical_code(graph, example_inputs)]
    for index, value in enumerate(example_inputs):
        meta = nodes[index].meta.get("example_value") if index < len(nodes) else None
        shown = meta if meta is not None and hasattr(meta, "shape") else value
        shape = getattr(shown, "shape", None)
        dims = [d if isinstance(d, int) else "sym" for d in shape] if shape is not None else None
        text.append(
            f"{type(value).__name__}:{getattr(shown, 'dtype', '')}:"
            f"{getattr(shown, 'device', '')}:{dims if dims is not None else type(shown).__name__}"
        )
    return hashlib.sha256("\n".join(text).encode()).hexdigest()[:32]


def graph_inputs(graph: Any, example_inputs: Sequence[Any]) -> GraphInputs:
    """The size symbols of a graph's inputs (Dynamo's, for a graph a backend receives), which one
    is the batch that ``runtime_shape`` specialises, and where its value is read at call time
    (``batch_position``), so a dispatcher can route each call to the artifact of its size."""
    return active().module.describe_graph_inputs(graph, example_inputs)


def parameter_constants(graph: Any) -> list[str]:
    """Parameters and buffers the graph reads as constants rather than as inputs: ``get_attr``
    nodes that target one, and ``call_module`` nodes whose sub-module owns some.

    Dynamo lifts parameters to graph inputs; ``torch.fx.symbolic_trace`` of an ``nn.Module`` keeps
    them inside the graph module, and Inductor's compiled artifacts then expect them as inputs.
    """
    if not hasattr(graph, "named_parameters"):
        return []
    named = {name for name, _ in graph.named_parameters()}
    named.update(name for name, _ in graph.named_buffers())
    found: list[str] = []
    for node in getattr(getattr(graph, "graph", None), "nodes", ()):
        target = str(node.target)
        if (node.op == "get_attr" and target in named) or (
            node.op == "call_module" and any(n.startswith(target + ".") for n in named)
        ):
            found.append(target)
    return found


def _meta_value(node: Any) -> Any:
    meta = getattr(node, "meta", {})
    return meta.get("example_value", meta.get("val"))


def _batch_dims(value: Any, batch_symbol: str) -> list[int]:
    shape = getattr(value, "shape", None)
    if shape is None:
        return []
    return [
        d for d, size in enumerate(shape) if not isinstance(size, int) and str(size) == batch_symbol
    ]


def batch_dims(
    graph: Any, batch_symbol: str | None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Every ``(input, dim)`` and ``(output, dim)`` whose size is exactly the batch symbol, from
    the graph's metadata (what padding pads and cuts back); empty without metadata."""
    if batch_symbol is None:
        return [], []
    nodes = list(getattr(getattr(graph, "graph", None), "nodes", ()))
    placeholders = [n for n in nodes if n.op == "placeholder"]
    inputs = [
        (index, dim)
        for index, node in enumerate(placeholders)
        for dim in _batch_dims(_meta_value(node), batch_symbol)
    ]
    outputs: list[tuple[int, int]] = []
    for node in nodes:
        if node.op != "output" or not node.args:
            continue
        returned = node.args[0]
        items = list(returned) if isinstance(returned, (list, tuple)) else [returned]
        for index, item in enumerate(items):
            outputs += [(index, dim) for dim in _batch_dims(_meta_value(item), batch_symbol)]
    return inputs, outputs


def mutated_inputs(graph: Any) -> list[str]:
    """Inputs the graph writes in place (``x.add_(...)``, ``x[i] = ...``, ``x.copy_(...)``):
    a CUDA graph that copies inputs into buffers of its own would write those, not the caller's
    tensors."""
    import operator

    nodes = list(getattr(getattr(graph, "graph", None), "nodes", ()))
    placeholders = {n for n in nodes if n.op == "placeholder"}
    found: list[str] = []
    for node in nodes:
        if node.op not in ("call_method", "call_function") or not node.args:
            continue
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        in_place = name.endswith("_") and not name.endswith("__") and not name.startswith("_")
        if target in (operator.setitem, operator.iadd, operator.imul, operator.isub):
            in_place = True
        if in_place and node.args[0] in placeholders:
            found.append(str(node.args[0]))
    return sorted(set(found))
