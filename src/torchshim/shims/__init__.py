"""The closed registry of shims: every supported torch series maps to one shim module.

Only modules in this package touch ``torch._inductor``, ``torch._dynamo``, ``torch._functorch``
and the other private parts of torch. Everything else in torchshim asks :func:`active` for the
installed series' shim and branches on :func:`capabilities`, never on versions.
"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import cast

from torchshim._version import TorchSeries, installed_torch_version, torch_series
from torchshim.errors import CapabilityUnavailable, UnsupportedTorchVersion
from torchshim.shims._protocol import FxCapture, GraphInputs, IsolatedCompile, ShimModule

__all__ = [
    "ALLOW_UNTESTED_ENV",
    "CAPABILITY_NAMES",
    "REGISTRY",
    "SUPPORTED_SERIES",
    "ActiveShim",
    "FxCapture",
    "GraphInputs",
    "IsolatedCompile",
    "ShimModule",
    "UntestedTorchWarning",
    "active",
    "capabilities",
    "load_shim_module",
    "require_capability",
    "series_providing",
    "shim_for",
]

log = logging.getLogger(__name__)

ALLOW_UNTESTED_ENV = "TORCHSHIM_ALLOW_UNTESTED"

#: Every supported series and the module that serves it. Closed: a series missing here is
#: unsupported, never "probably like the newest one".
REGISTRY: dict[TorchSeries, str] = {
    TorchSeries(2, 5): "torch_2_05",
    TorchSeries(2, 6): "torch_2_06",
    TorchSeries(2, 7): "torch_2_06",
    TorchSeries(2, 8): "torch_2_08",
    TorchSeries(2, 9): "torch_2_09",
    TorchSeries(2, 10): "torch_2_10",
    TorchSeries(2, 11): "torch_2_11",
    TorchSeries(2, 12): "torch_2_11",
    TorchSeries(2, 13): "torch_2_11",
    TorchSeries(2, 14): "torch_2_11",
    TorchSeries(2, 15): "torch_2_11",
}

SUPPORTED_SERIES: tuple[TorchSeries, ...] = tuple(sorted(REGISTRY))

#: Every capability name any shim may declare, with what it enables.
CAPABILITY_NAMES: dict[str, str] = {
    "supports_inductor_fx_cache": "compile through Inductor's FX graph cache and look graphs up by key",
    "supports_cache_key_capture": "capture the FX-graph-cache key and generated module of a compile",
    "supports_metrics_context": "Dynamo's metrics context exists (get_metrics_context)",
    "supports_standalone_compile": "torch._inductor.standalone_compile and CompiledArtifact",
    "supports_standalone_binary_format": "CompiledArtifact.save/load with format='binary'",
    "supports_standalone_unpacked_format": "CompiledArtifact.save/load with format='unpacked'",
    "supports_standalone_from_graph": "standalone_compile(dynamic_shapes='from_graph') on any graph",
    "supports_direct_cpu_load": (
        "load a standalone CPU graph by running its generated module with its kernels opened "
        "directly (no compiler import, no per-kernel hashing)"
    ),
    "supports_dynamo_program": "save Dynamo's output and run it in a warm process without tracing",
    "supports_program_real_models": (
        "save and load Dynamo's output of third-party models in any process (GPT-2 from "
        "transformers 5; a process that compiled before)"
    ),
}


class UntestedTorchWarning(UserWarning):
    """The installed torch is newer than every supported series and TORCHSHIM_ALLOW_UNTESTED=1."""


def load_shim_module(name: str) -> ShimModule:
    """Import ``torchshim.shims.<name>`` (works under any installed torch: imports are lazy)."""
    module: ModuleType = importlib.import_module(f"{__name__}.{name}")
    return cast(ShimModule, module)


def shim_for(series: TorchSeries) -> ShimModule:
    """The shim module registered for ``series`` (KeyError-free: raises UnsupportedTorchVersion)."""
    name = REGISTRY.get(series)
    if name is None:
        raise UnsupportedTorchVersion(str(series), str(series), [str(s) for s in SUPPORTED_SERIES])
    return load_shim_module(name)


@dataclass(frozen=True)
class ActiveShim:
    """The shim chosen for the installed torch."""

    series: TorchSeries
    torch_version: str
    module_name: str
    module: ShimModule
    untested: bool

    @property
    def capabilities(self) -> frozenset[str]:
        return self.module.CAPABILITIES


def _select(series: TorchSeries, version: str, allow_untested: bool) -> tuple[str, bool]:
    name = REGISTRY.get(series)
    if name is not None:
        return name, False
    newest = SUPPORTED_SERIES[-1]
    if allow_untested and series > newest:
        return REGISTRY[newest], True
    raise UnsupportedTorchVersion(version, str(series), [str(s) for s in SUPPORTED_SERIES])


@functools.cache
def active() -> ActiveShim:
    """The shim for the installed torch, chosen once per process.

    Raises :class:`UnsupportedTorchVersion` for a series outside the registry, unless the series is
    newer than every supported one and ``TORCHSHIM_ALLOW_UNTESTED=1``; then the newest shim is used
    and one :class:`UntestedTorchWarning` is issued.
    """
    version = installed_torch_version()
    series = torch_series()
    from torchshim import config

    allow = config.allow_untested()
    name, untested = _select(series, version, allow)
    if untested:
        message = (
            f"torch {version} (series {series}) is newer than every series torchshim supports "
            f"(newest: {SUPPORTED_SERIES[-1]}); using the {SUPPORTED_SERIES[-1]} shim because "
            f"{ALLOW_UNTESTED_ENV}=1. Run `torchshim doctor` to see which private hooks it breaks."
        )
        warnings.warn(message, UntestedTorchWarning, stacklevel=2)
        log.warning(message)
    return ActiveShim(series, version, name, load_shim_module(name), untested)


def capabilities() -> frozenset[str]:
    """Named capabilities of the installed torch, e.g. ``"supports_standalone_compile"``."""
    return active().capabilities


def series_providing(capability: str) -> list[TorchSeries]:
    """The supported series whose shim declares ``capability``."""
    return [s for s in SUPPORTED_SERIES if capability in shim_for(s).CAPABILITIES]


def require_capability(capability: str, hint: str = "") -> None:
    """Raise :class:`CapabilityUnavailable` unless the installed torch provides ``capability``."""
    if capability not in CAPABILITY_NAMES:
        raise ValueError(f"unknown capability {capability!r}; known: {sorted(CAPABILITY_NAMES)}")
    shim = active()
    if capability not in shim.capabilities:
        raise CapabilityUnavailable(
            capability,
            shim.torch_version,
            [str(s) for s in series_providing(capability)],
            hint,
        )
