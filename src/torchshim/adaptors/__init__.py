"""Adaptors behind one ``CompilerInterface``: eager, Inductor (FX graph cache) and Inductor
standalone (``standalone_compile``). They call only the facade and branch only on capabilities."""

from __future__ import annotations

from typing import Any

from torchshim.adaptors.base import CompiledCallable, CompilerInterface, GraphInputs
from torchshim.adaptors.eager import EagerAdaptor
from torchshim.adaptors.graphs import graph_digest, graph_inputs, parameter_constants
from torchshim.adaptors.handles import (
    CACHE_FORMAT_VERSION,
    EagerHandle,
    Handle,
    InductorHandle,
    StandaloneHandle,
    handle_from_json,
)
from torchshim.adaptors.inductor import InductorAdaptor
from torchshim.adaptors.machine import machine_probes, warm_up
from torchshim.adaptors.standalone import InductorStandaloneAdaptor
from torchshim.config import ADAPTOR_NAMES
from torchshim.errors import UnknownAdaptorError
from torchshim.shims import capabilities

__all__ = [
    "ADAPTOR_NAMES",
    "CACHE_FORMAT_VERSION",
    "CompiledCallable",
    "CompilerInterface",
    "EagerAdaptor",
    "EagerHandle",
    "GraphInputs",
    "Handle",
    "InductorAdaptor",
    "InductorHandle",
    "InductorStandaloneAdaptor",
    "StandaloneHandle",
    "graph_digest",
    "graph_inputs",
    "handle_from_json",
    "machine_probes",
    "make_adaptor",
    "parameter_constants",
    "warm_up",
]


def make_adaptor(name: str, **kwargs: Any) -> CompilerInterface:
    """``"eager"``, ``"inductor"``, ``"inductor_standalone"`` (torch 2.8+; raises
    :class:`CapabilityUnavailable` elsewhere) or ``"auto"`` (standalone where the installed torch
    has it, else inductor). ``kwargs`` go to the adaptor (``artifact_format`` for standalone)."""
    if name == "auto":
        name = (
            "inductor_standalone" if "supports_standalone_compile" in capabilities() else "inductor"
        )
        if name == "inductor":
            kwargs.pop("artifact_format", None)
    if name == "eager":
        return EagerAdaptor(**kwargs)
    if name == "inductor":
        return InductorAdaptor(**kwargs)
    if name == "inductor_standalone":
        return InductorStandaloneAdaptor(**kwargs)
    raise UnknownAdaptorError(f"unknown adaptor {name!r}; choose one of {', '.join(ADAPTOR_NAMES)}")
