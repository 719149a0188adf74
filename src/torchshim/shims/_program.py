"""Dynamo's output saved and loaded (torch 2.10+): a warm process runs the saved program (the
bytecode Dynamo wrote, its guards and the compiled graphs) instead of tracing the model again.

torch 2.10 - 2.15: ``torch.compile(fn, fullgraph=True).aot_compile(((args), kwargs))`` with
``torch._dynamo.config.enable_aot_compile`` set traces once and gives an
``AOTCompiledFunction``; ``AOTCompiledFunction.serialize`` returns bytes on 2.10 and an
``AOTCompileSaveResult`` (``.serialized_data``) from 2.11; ``AOTCompiledFunction.deserialize(data,
f_globals=...)`` rebuilds it, calling the backend's ``SerializableCallable`` to rebuild each
compiled graph (``deserialize_compile_artifacts``). Its guards are serialized with it (tensor
shapes, dtypes, strides, constants read from the model), all but global ones (grad mode and the
like), which the caller checks itself. The backend's graph is saved with
``torch.fx._graph_pickler.GraphPickler`` (torch 2.7+), its node metadata reduced to what
torchshim reads (placeholders' and outputs' example values, detached: a fake tensor with a
``grad_fn`` cannot be pickled).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "capture_program",
    "graph_from_bytes",
    "graph_to_bytes",
    "load_program",
    "program_call",
    "program_guard",
    "program_modules",
    "program_why_not",
    "save_program",
    "saved_graph",
]


def saved_graph(fn: Callable[..., Any], payload: bytes) -> Any:
    from torchshim.shims._saved_graph import SavedGraph

    return SavedGraph(fn, payload)


def capture_program(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], backend: Any
) -> Any:
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    # aot_compile_fullgraph calls the backend with AOTAutograd's cache options patched
    # (strict_autograd_cache, bundled_autograd_cache, force_autograd_cache...); they are part of
    # the compiler's hash, so the backend gets the config an ordinary trace would give it, and a
    # warm process (which never enters that patch) computes the same keys.
    before = functorch_config.get_config_copy()

    def plain_config_backend(gm: Any, example_inputs: Sequence[Any]) -> Any:
        now = functorch_config.get_config_copy()
        changed = {k: v for k, v in before.items() if now.get(k) != v}
        with functorch_config.patch(changed):
            return backend(gm, example_inputs)

    with dynamo_config.patch(enable_aot_compile=True):
        compiled: Any = torch.compile(fn, fullgraph=True, backend=plain_config_backend)
        return compiled.aot_compile((tuple(args), dict(kwargs)))


def save_program(program: Any) -> bytes:
    result = type(program).serialize(program)
    data = getattr(result, "serialized_data", result)  # 2.11+: AOTCompileSaveResult; 2.10: bytes
    if not isinstance(data, bytes):
        raise TypeError(f"AOTCompiledFunction.serialize gave {type(data).__name__}, not bytes")
    return data


def load_program(data: bytes, f_globals: dict[str, Any], restore: Callable[[bytes], Any]) -> Any:
    from torch._dynamo.aot_compile import AOTCompiledFunction

    from torchshim.shims._saved_graph import RESTORE

    token = RESTORE.set(restore)
    try:
        return AOTCompiledFunction.deserialize(data, f_globals=f_globals)
    finally:
        RESTORE.reset(token)


def _plain_names(program: Any) -> tuple[str, ...] | None:
    """The parameter names of a traced function whose locals are just its positional arguments
    (no defaults, no ``*args``/``**kwargs``, no closure), cached on the program; else ``None``."""
    import inspect

    if not hasattr(program, "_torchshim_names"):
        names: tuple[str, ...] | None = None
        artifacts = program._artifacts
        params = list(artifacts.signature.parameters.values())
        if not artifacts.runtime_env.closure and all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is p.empty
            for p in params
        ):
            names = tuple(p.name for p in params)
        program._torchshim_names = names
    found: tuple[str, ...] | None = program._torchshim_names
    return found


def program_guard(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    # AOTCompiledFunction.guard_check binds the call with inspect.Signature.bind (about 10 us);
    # a call that passes exactly the function's positional parameters builds the same locals
    names = _plain_names(program)
    if names is not None and not kwargs and len(args) == len(names):
        return bool(program._artifacts.guard_manager.check(dict(zip(names, args, strict=True))))
    return bool(program.guard_check(*args, **kwargs))


def program_why_not(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The first guard that fails, in words."""
    try:
        prepare = getattr(program, "prepare_f_locals", None)  # 2.11+; 2.10 binds in guard_check
        if prepare is not None:
            f_locals = prepare(*args, **kwargs)
        else:
            bound = program._artifacts.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            f_locals = dict(bound.arguments)
        info = program._artifacts.guard_manager.check_verbose(f_locals)
    except Exception as exc:  # a call that does not even bind: say so
        return f"the call does not match the traced signature ({type(exc).__name__}: {exc})"
    parts = getattr(info, "verbose_code_parts", None) or [str(info)]
    return str(parts[0])


def program_call(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run a program whose guards the caller checked."""
    return program.fn(*args, **kwargs)


def program_modules(program: Any) -> list[str]:
    """The modules whose code the trace read (the model's and torch's)."""
    return sorted({source.module for source in program.source_info().inlined_sources})


def graph_to_bytes(graph: Any) -> bytes:
    import torch
    from torch.fx._graph_pickler import GraphPickler, Options
    from torch.utils._pytree import tree_leaves

    body = copy.deepcopy(graph.graph)
    keep = set(body.find_nodes(op="placeholder"))
    keep |= {a for a in tree_leaves(body.output_node().args) if isinstance(a, torch.fx.Node)}
    for node in body.nodes:
        value = node.meta.get("example_value", node.meta.get("val"))
        node.meta = {}
        if node in keep and value is not None:
            detached = value.detach() if isinstance(value, torch.Tensor) else value
            node.meta["example_value"] = detached
    clean = torch.fx.GraphModule(graph, body)
    clean.__dict__.pop("shape_env", None)
    clean.meta = {}
    data: bytes = GraphPickler.dumps(clean, Options(ops_filter=None))
    return data


def graph_from_bytes(data: bytes) -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx._graph_pickler import GraphPickler
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return GraphPickler.loads(data, FakeTensorMode(shape_env=ShapeEnv()))
