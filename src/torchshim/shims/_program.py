"""Dynamo's output saved and loaded (torch 2.10+): a warm process runs the saved program (the
bytecode Dynamo wrote, its guards and the compiled graphs) instead of tracing the model again.

torch 2.10 - 2.15: ``torch.compile(fn, fullgraph=True).aot_compile(((args), kwargs))`` with
``torch._dynamo.config.enable_aot_compile`` set traces once and gives an
``AOTCompiledFunction``; ``AOTCompiledFunction.serialize`` returns bytes on 2.10 and an
``AOTCompileSaveResult`` (``.serialized_data``) from 2.11; ``AOTCompiledFunction.deserialize(data,
f_globals=...)`` rebuilds it, calling the backend's ``SerializableCallable`` to rebuild each
compiled graph (``deserialize_compile_artifacts``). Its guards are serialized with it (tensor
shapes, dtypes, strides, constants read from the model), all but global ones (grad mode and the
like), which the caller checks itself, and identity guards, which cannot leave a process (passed
over with ``guard_filter_fn``; the caller hashes the traced modules' code instead). The backend's graph is saved with
``torch.fx._graph_pickler.GraphPickler`` (torch 2.7+), its node metadata reduced to what
torchshim reads (placeholders' and outputs' example values, detached: a fake tensor with a
``grad_fn`` cannot be pickled).
"""

from __future__ import annotations

import copy
import json
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
        compiled: Any = torch.compile(
            fn,
            fullgraph=True,
            backend=plain_config_backend,
            options={"guard_filter_fn": _saveable_guards},
        )
        return compiled.aot_compile((tuple(args), dict(kwargs)))


# Guards on an object's identity (a function, a closure cell, a class, a module, an enum member,
# a dict's version tag) cannot leave the process: Dynamo refuses to serialize them (the types it
# lists in CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES). What they protect is
# protected another way in a saved trace: the code of every module the trace read is hashed at
# save and checked at load, and the model's class and file are in the key. The rest (types,
# shapes, dtypes, strides, constants) are kept and checked at every call.
def _saveable_guards(entries: Sequence[Any]) -> list[bool]:
    from torch._dynamo.guards import CheckFunctionManager

    dropped = frozenset(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    keep = [
        entry.guard_type not in dropped and not dropped.intersection(entry.derived_guard_types)
        for entry in entries
    ]
    # Dynamo builds the kept guards a second time, and that build asserts that each guard still
    # refers to the object (and class) the first build saw: an object made afresh at each access
    # (transformers' config views) fails it on torch 2.10 and 2.11. The second build records them
    # again; it starts from each kept guard as the first build did.
    for entry, kept in zip(entries, keep, strict=True):
        if kept:
            guard = entry.orig_guard
            guard.obj_weakref = guard.guarded_class_weakref = None
            guard.guard_types = guard.code_list = None
    return keep


_HEADER = b"torchshim-program-1\n"


def _resolve(module: str, qualname: str = "") -> Any:
    import importlib

    value: Any = importlib.import_module(module)
    for part in qualname.split(".") if qualname else ():
        value = getattr(value, part)
    return value


def _installed_globals(program: Any) -> dict[str, list[str]]:
    """The globals Dynamo installed for the program's bytecode under names of its own (a module
    or a class it reconstructs an output with: ``___module_collections_<id>_c0``), each as the
    module (and qualified name) a new process imports it by. Raises for one that has no name."""
    import builtins
    import types

    env = program._artifacts.runtime_env
    known = set(env.used_globals) | set(env.import_sources) | {program._artifacts.backend_id}
    f_globals = program.fn.__globals__
    found: dict[str, list[str]] = {}
    for ref in sorted(getattr(env, "external_refs", ()) or ()):
        if ref in known or hasattr(builtins, ref) or ref not in f_globals:
            continue
        value = f_globals[ref]
        if isinstance(value, types.ModuleType):
            found[ref] = [value.__name__]
            continue
        module = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None)
        try:
            named = isinstance(module, str) and isinstance(qualname, str)
            same = named and _resolve(str(module), str(qualname)) is value
        except (ImportError, AttributeError):
            same = False
        if same:
            found[ref] = [str(module), str(qualname)]
        elif ref.startswith("__"):  # Dynamo's own name for an object no process can find again
            raise TypeError(
                f"the traced code refers to a {type(value).__name__} ({ref}) that a new process "
                "cannot import by name"
            )
    return found


def save_program(program: Any) -> bytes:
    result = type(program).serialize(program)
    data = getattr(result, "serialized_data", result)  # 2.11+: AOTCompileSaveResult; 2.10: bytes
    if not isinstance(data, bytes):
        raise TypeError(f"AOTCompiledFunction.serialize gave {type(data).__name__}, not bytes")
    header = json.dumps({"globals": _installed_globals(program)}, sort_keys=True).encode()
    return _HEADER + header + b"\n" + data


def load_program(data: bytes, f_globals: dict[str, Any], restore: Callable[[bytes], Any]) -> Any:
    from torch._dynamo.aot_compile import AOTCompiledFunction

    from torchshim.shims._saved_graph import RESTORE

    if not data.startswith(_HEADER):
        raise ValueError("not a program saved by this torchshim")
    header, _, body = data[len(_HEADER) :].partition(b"\n")
    scope = dict(f_globals)
    for ref, where in json.loads(header)["globals"].items():
        scope[ref] = _resolve(*where)
    token = RESTORE.set(restore)
    try:
        return AOTCompiledFunction.deserialize(body, f_globals=scope)
    finally:
        RESTORE.reset(token)


def _locals_layout(program: Any) -> tuple[tuple[str, ...], str | None, str | None] | None:
    """How a call's arguments become the traced function's locals when there is no closure and
    every parameter is positional-or-keyword without a default, ``*args`` or ``**kwargs``: the
    positional names and the ``*args`` and ``**kwargs`` names (or ``None``), cached on the
    program; ``None`` when the layout is anything else."""
    import inspect

    if not hasattr(program, "_torchshim_layout"):
        layout: tuple[tuple[str, ...], str | None, str | None] | None = None
        artifacts = program._artifacts
        params = list(artifacts.signature.parameters.values())
        plain = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        var = [p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL]
        varkw = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        # a signature orders its kinds itself: only positional-only and keyword-only are out
        simple = len(plain) + len(var) + len(varkw) == len(params)
        if (
            simple
            and not artifacts.runtime_env.closure
            and all(p.default is p.empty for p in plain)
        ):
            names = tuple(p.name for p in plain)
            layout = (names, var[0] if var else None, varkw[0] if varkw else None)
        program._torchshim_layout = layout
    found: tuple[tuple[str, ...], str | None, str | None] | None = program._torchshim_layout
    return found


def program_guard(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    # AOTCompiledFunction.guard_check binds the call with inspect.Signature.bind (about 10 us);
    # a call whose arguments map onto the parameters without defaults builds the same locals
    layout = _locals_layout(program)
    if layout is not None:
        names, var, varkw = layout
        fits = len(args) == len(names) or (var is not None and len(args) >= len(names))
        if fits and (not kwargs or (varkw is not None and not set(kwargs) & set(names))):
            f_locals: dict[str, Any] = dict(zip(names, args, strict=False))
            if var is not None:
                f_locals[var] = tuple(args[len(names) :])
            if varkw is not None:
                f_locals[varkw] = dict(kwargs)
            return bool(program._artifacts.guard_manager.check(f_locals))
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
