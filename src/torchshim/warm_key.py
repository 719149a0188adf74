"""What a saved trace (:mod:`torchshim.warm`) is keyed by: everything it depends on that can be
known without tracing the model."""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torchshim._stable import stable_json

if TYPE_CHECKING:
    from torchshim.compile_backend import Backend

__all__ = [
    "PROGRAM_FORMAT",
    "global_state",
    "module_digest",
    "program_factors",
    "traced_target",
]

#: Part of every program key: bump when the key's composition or the entry's layout changes.
PROGRAM_FORMAT = 2


def _digest(value: Any) -> str:
    return hashlib.sha256(stable_json(value).encode()).hexdigest()[:32]


def _file_digest(path: str | None) -> str:
    if not path:
        return "none"
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return "unreadable"


def module_digest(name: str) -> str:
    module = sys.modules.get(name)
    return _file_digest(getattr(module, "__file__", None))


def _tensor_spec(value: Any, batch_dim: int | None) -> list[Any]:
    dims: list[Any] = list(value.shape)
    if batch_dim is not None and value.dim() > batch_dim:
        dims[batch_dim] = "batch"
    return [str(value.dtype), str(value.device), dims, bool(value.requires_grad)]


def _value_spec(value: Any, batch_dim: int | None) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return ["tensor", *_tensor_spec(value, batch_dim)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return [type(value).__name__, value]
    if isinstance(value, (tuple, list)):
        return [type(value).__name__, [_value_spec(v, batch_dim) for v in value]]
    if isinstance(value, dict):
        return ["dict", {str(k): _value_spec(v, batch_dim) for k, v in value.items()}]
    return [f"{type(value).__module__}.{type(value).__qualname__}"]


def traced_target(model: Callable[..., Any]) -> tuple[Callable[..., Any], str, tuple[Any, ...]]:
    """What is traced (the model's class's ``forward``, or :func:`run_module` where ``forward``
    has a closure, with the model as the first argument; or the function), the model's qualified
    name, and the arguments that come before the call's."""
    import torch

    from torchshim._traced import run_module

    if isinstance(model, torch.nn.Module):
        cls = type(model)
        forward = cls.forward
        fn = forward if getattr(forward, "__closure__", None) is None else run_module
        return fn, f"{cls.__module__}.{cls.__qualname__}", (model,)
    name = f"{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', '?')}"
    return model, name, ()


def global_state() -> dict[str, Any]:
    """The process-wide state Dynamo guards on that a saved program's guards do not check."""
    import torch

    return {
        "grad": torch.is_grad_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def program_factors(
    chosen: Backend, model: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, str]:
    """Everything a saved program depends on that can be known without tracing."""
    import torch

    from torchshim.adaptors import make_adaptor

    _fn, name, _lead = traced_target(model)
    source = inspect.getsourcefile(type(model) if isinstance(model, torch.nn.Module) else model)
    tensors: list[Any] = []
    if isinstance(model, torch.nn.Module):
        for kind, items in (("p", model.named_parameters()), ("b", model.named_buffers())):
            tensors += [[kind, n, *_tensor_spec(t, None)] for n, t in items]
    batch_dim = chosen.options.batch_dim
    options = chosen.options
    return {
        "model": name,
        "model_source": _file_digest(source),
        "parameters": _digest(tensors),
        "inputs": _digest(
            [
                [_value_spec(v, batch_dim) for v in args],
                {k: _value_spec(v, batch_dim) for k, v in kwargs.items()},
            ]
        ),
        "global_state": _digest(global_state()),
        "compiler": make_adaptor(chosen.adaptor_name).compute_hash(),
        "compiler_config": stable_json(chosen.compiler_config),
        "settings": stable_json(
            {
                "sizes": list(chosen.compile_sizes),
                "ranges": [list(r) for r in chosen.compile_ranges],
                "adaptor": chosen.adaptor_name,
                "batch_dim": batch_dim,
                "rank": options.rank,
            }
        ),
        "format": str(PROGRAM_FORMAT),
    }
