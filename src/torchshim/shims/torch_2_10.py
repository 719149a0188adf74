"""Shim for torch 2.10.

What changed from 2.9: Dynamo's whole-graph output can be saved and loaded
(``aot_compile`` with ``enable_aot_compile``, ``SerializableCallable`` backends,
``AOTCompiledFunction.serialize``/``deserialize``; 2.9 has no ``SerializableCallable``), so a warm
process can skip the trace (capability ``supports_dynamo_program``; see
:mod:`torchshim.shims._program`). Everything else is 2.9's.
"""

from __future__ import annotations

from torchshim.shims import _program
from torchshim.shims import torch_2_09 as _base
from torchshim.shims.torch_2_09 import *  # noqa: F403  (everything that did not change)

__all__ = list(_base.__all__)

FIRST_SERIES: tuple[int, int] = (2, 10)

CAPABILITIES: frozenset[str] = _base.CAPABILITIES | {"supports_dynamo_program"}

# the 2.5 - 2.9 modules export these as functions that raise CapabilityUnavailable
capture_program = _program.capture_program
save_program = _program.save_program
load_program = _program.load_program
saved_graph = _program.saved_graph
program_guard = _program.program_guard
program_why_not = _program.program_why_not
program_call = _program.program_call
program_modules = _program.program_modules
graph_to_bytes = _program.graph_to_bytes
graph_from_bytes = _program.graph_from_bytes
