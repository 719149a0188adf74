"""Resolve the private hooks listed in ``hooks.toml`` against the installed torch.

Used by ``torchshim doctor``. Lives in ``shims/`` because it imports torch's private modules
(by name, from the inventory) and nothing else in torchshim may.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["Resolved", "find_elsewhere", "resolve", "snapshot", "torch_config_snapshot"]

#: Where a hook that left its documented home is searched for.
RELATED_MODULES: tuple[str, ...] = (
    "torch._inductor",
    "torch._inductor.codecache",
    "torch._inductor.output_code",
    "torch._inductor.compile_fx",
    "torch._inductor.standalone_compile",
    "torch._inductor.cpu_vec_isa",
    "torch._inductor.utils",
    "torch._inductor.config",
    "torch._inductor.runtime.cache_dir_utils",
    "torch._dynamo.utils",
    "torch._dynamo.metrics_context",
    "torch._functorch.config",
    "torch._functorch._aot_autograd.autograd_cache",
    "torch._guards",
    "torch.compiler",
)

_ABSENT = object()


@dataclass(frozen=True)
class Resolved:
    """The object found at a dotted path, and its parameter names when it has a signature."""

    found: bool
    parameters: tuple[str, ...] | None
    error: str | None = None


def _import_longest(parts: list[str]) -> tuple[Any, int] | None:
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            return importlib.import_module(name), cut
        except ModuleNotFoundError:
            continue
    return None


def _lookup(path: str) -> Any:
    parts = path.split(".")
    head = _import_longest(parts)
    if head is None:
        return _ABSENT
    obj, cut = head
    for attr in parts[cut:]:
        obj = getattr(obj, attr, _ABSENT)
        if obj is _ABSENT:
            return _ABSENT
    return obj


def _parameters(obj: Any) -> tuple[str, ...] | None:
    if inspect.ismodule(obj) or not callable(obj):
        return None
    try:
        return tuple(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def resolve(path: str) -> Resolved:
    """Find ``path`` (``module.attr.attr``) in the installed torch."""
    try:
        obj = _lookup(path)
    except Exception as exc:  # a broken torch import is itself a finding
        return Resolved(False, None, f"{type(exc).__name__}: {exc}")
    if obj is _ABSENT:
        return Resolved(False, None)
    return Resolved(True, _parameters(obj))


def find_elsewhere(path: str, candidates: list[str]) -> list[str]:
    """Other places where the hook of ``path`` exists: the given candidates first, then the
    last one or two components of the path searched in :data:`RELATED_MODULES`."""
    hits = [c for c in candidates if c != path and resolve(c).found]
    parts = path.split(".")
    tails = [".".join(parts[-2:]), parts[-1]] if len(parts) >= 2 else [parts[-1]]
    for module in RELATED_MODULES:
        for tail in tails:
            where = f"{module}.{tail}"
            if where != path and where not in hits and resolve(where).found:
                hits.append(where)
                break
    return hits


def snapshot(paths: list[str]) -> dict[str, str | None]:
    """Where and what the raw attribute at each path is (``None`` when absent), to detect leaked
    patches. Attributes of classes are read from the defining class's ``__dict__``, since a
    classmethod gives a new bound object on every access."""
    out: dict[str, str | None] = {}
    for path in paths:
        owner_path, _, attr = path.rpartition(".")
        try:
            owner = _lookup(owner_path)
        except Exception:
            owner = _ABSENT
        if owner is _ABSENT:
            out[path] = None
            continue
        if isinstance(owner, type):
            holder = next((k for k in owner.__mro__ if attr in vars(k)), None)
            out[path] = (
                None if holder is None else f"{holder.__qualname__}:{id(vars(holder)[attr])}"
            )
        else:
            obj = getattr(owner, attr, _ABSENT)
            out[path] = None if obj is _ABSENT else str(id(obj))
    return out


def torch_config_snapshot() -> dict[str, str]:
    """Inductor's and functorch's current config, as text, to detect leaked config changes."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    return {
        f"{name}.{key}": repr(value)
        for name, module in (("inductor", inductor_config), ("functorch", functorch_config))
        for key, value in sorted(module.get_config_copy().items())
    }
