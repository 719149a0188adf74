"""torchshim: a stable facade over PyTorch's private compile-cache hooks, torch 2.5 to 2.15.

The public names are re-exported here; see the README for the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from torchshim._version import TorchSeries, parse_series, torch_series
from torchshim.errors import (
    AdaptorConfigError,
    ArtifactMissingError,
    ArtifactUnreadableError,
    CacheCorruptionError,
    CacheDirError,
    CacheLockTimeout,
    CapabilityUnavailable,
    ConfigError,
    ForeignHandleError,
    HandleFormatError,
    LoadError,
    PatchTargetMissing,
    TorchShimError,
    TorchVersionParseError,
    UnknownAdaptorError,
    UnsupportedGraphError,
    UnsupportedTorchVersion,
)
from torchshim.options import BackendOptions
from torchshim.shims import SUPPORTED_SERIES, UntestedTorchWarning, capabilities

if TYPE_CHECKING:
    from torchshim.adaptors import CompilerInterface
    from torchshim.compile_backend import Backend
    from torchshim.doctor import HookReport

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_SERIES",
    "AdaptorConfigError",
    "ArtifactMissingError",
    "ArtifactUnreadableError",
    "BackendOptions",
    "CacheCorruptionError",
    "CacheDirError",
    "CacheLockTimeout",
    "CapabilityUnavailable",
    "ConfigError",
    "ForeignHandleError",
    "HandleFormatError",
    "LoadError",
    "PatchTargetMissing",
    "TorchSeries",
    "TorchShimError",
    "TorchVersionParseError",
    "UnknownAdaptorError",
    "UnsupportedGraphError",
    "UnsupportedTorchVersion",
    "UntestedTorchWarning",
    "backend",
    "capabilities",
    "capture_config",
    "compile",
    "hook_report",
    "make_adaptor",
    "parse_series",
    "precompile",
    "torch_series",
    "warm_up",
]


def capture_config() -> AbstractContextManager[None]:
    """Dynamo settings under which every process traces a model to the same graphs.

    Use it around the first call of a ``torch.compile``-d model whose backend calls the adaptors
    (torchshim's backend does this itself). By default Dynamo traces Python floats symbolically and
    Inductor, while compiling, may ask it to re-trace with them specialised; a process that loads
    instead of compiling never gets that request and sees a different graph, so its cache look-ups
    miss. Inside this block floats are specialised up front (``specialize_float=True``).
    """
    from torchshim.shims import active

    return active().module.capture_config()


def backend(
    options: str | os.PathLike[str] | BackendOptions | None = None, /, **settings: Any
) -> Backend:
    """A ``torch.compile`` backend: a general graph plus one per size in ``compile_sizes``,
    compiled up front and stored in ``cache_dir``, loaded on later starts. Settings:
    :class:`BackendOptions` (see :mod:`torchshim.compile_backend`)."""
    from torchshim.compile_backend import backend as _backend

    return _backend(options, **settings)


def compile(
    model: Callable[..., Any],
    options: str | os.PathLike[str] | BackendOptions | None = None,
    /,
    **settings: Any,
) -> Callable[..., Any]:
    """``torch.compile(model, backend=torchshim.backend(...))``, traced once with dimension
    ``batch_dim`` of every tensor argument symbolic, under :func:`capture_config`."""
    from torchshim.compile_backend import compile as _compile

    return _compile(model, options, **settings)


def precompile(
    model: Callable[..., Any],
    example_args: Any,
    options: str | os.PathLike[str] | BackendOptions | None = None,
    /,
    example_kwargs: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Compile every graph ``model(*example_args)`` needs, general and per served size, into the
    cache ahead of time (a build step), so that serving processes only load; see
    :mod:`torchshim.aot_build` and ``torchshim precompile``."""
    from torchshim.aot_build import precompile as _precompile

    return _precompile(model, example_args, options, example_kwargs=example_kwargs, **settings)


def hook_report() -> HookReport:
    """Check the installed torch's private hooks against the inventory (see ``torchshim doctor``)."""
    from torchshim.doctor import hook_report as _hook_report

    return _hook_report()


def make_adaptor(name: str, **kwargs: Any) -> CompilerInterface:
    """Create an adaptor: ``"eager"``, ``"inductor"``, ``"inductor_standalone"`` or ``"auto"``."""
    from torchshim.adaptors import make_adaptor as _make_adaptor

    return _make_adaptor(name, **kwargs)


def warm_up(cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Pay Inductor's one-time start-up in this process now instead of inside the first compile
    or load: the CPU vector-ISA probe, which builds and runs test programs (5-30 s in every fresh
    process). torchshim records the answer, keyed by torch build, C++ compiler and CPU, in
    ``cache_dir`` (when given) and in the user's torchshim cache directory, so that only the
    first process on a machine pays it. Compiles and loads through torchshim use the record too.
    It always runs the probe (unless recorded): a process that compiles or loads CUDA graphs
    only may never need it, so call it where CPU graphs are compiled or loaded.
    """
    from torchshim.adaptors import warm_up as _warm_up
    from torchshim.cache import CacheStore

    _warm_up(CacheStore(cache_dir) if cache_dir is not None else None)
