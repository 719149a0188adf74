"""Ahead-of-time builds: compile a model's graphs for its served sizes into a cache in a build
step (a container build, a CI job), so that no serving process ever compiles.

    torchshim precompile my_package.serving:example --cache-dir /srv/cache --sizes 1,2,4,8

``my_package.serving:example`` names a function that takes no arguments and returns ``(model,
example_args)`` or ``(model, example_args, example_kwargs)``: the model as the serving process
builds it and one call's inputs (any batch the serving process would send). The build traces it
as ``torchshim.compile`` does and stores the general graph and every served size; a serving
process with the same model, settings and torch build then loads them all.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchshim.errors import ConfigError
from torchshim.options import BackendOptions

__all__ = ["load_target", "precompile"]


def precompile(
    model: Callable[..., Any],
    example_args: Sequence[Any],
    options: str | os.PathLike[str] | BackendOptions | None = None,
    /,
    example_kwargs: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Compile (or load) every graph ``model`` needs for ``example_args`` into the cache, the
    way ``torchshim.compile(model, options, **settings)`` would at its first call; what the
    backend did (``BackendStats.as_dict()``)."""
    import torch

    from torchshim.compile_backend import compile as compile_model

    compiled = compile_model(model, options, **settings)
    with torch.no_grad():
        compiled(*example_args, **dict(example_kwargs or {}))
    stats: dict[str, Any] = compiled.backend.stats.as_dict()  # type: ignore[attr-defined]
    return stats


def load_target(
    target: str, device: str | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Import ``module:function`` and call it: ``(model, args, kwargs)``, moved to ``device``
    when one is given. A target that cannot be imported or returns something else is a
    :class:`ConfigError` naming it."""
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise ConfigError(
            f"precompile target {target!r} is not module:function (for example "
            "torchshim.demo:example)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"precompile target {target!r}: cannot import {module_name}: {exc}"
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(
            f"precompile target {target!r}: {module_name} has no function {function_name}"
        )
    try:
        result = function()
    except Exception as exc:  # the user's function: say what it raised, in one line
        raise ConfigError(
            f"precompile target {target!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise ConfigError(
            f"precompile target {target!r} returned {type(result).__name__}; it must return "
            "(model, example_args) or (model, example_args, example_kwargs)"
        )
    model, args = result[0], tuple(result[1])
    kwargs = dict(result[2]) if len(result) == 3 else {}
    if device is not None:
        model, args, kwargs = _to_device(model, args, kwargs, device)
    return model, args, kwargs


def _to_device(
    model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], device: str
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    import torch

    def move(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    return model, tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}
