"""Shim for torch 2.9 and 2.10.

What changed from 2.8: ``standalone_compile(dynamic_shapes="from_graph")`` works for single-output
graphs (2.8.0 raised ``TypeError: 'Node' object is not iterable``). Everything else is 2.8's.
"""

from __future__ import annotations

from torchshim.shims.torch_2_08 import (
    CAPABILITIES as _CAPABILITIES_2_08,
)
from torchshim.shims.torch_2_08 import (
    PATCH_TARGETS,
    AlwaysHitShapeEnv,
    autograd_cache_off,
    capture_fx_compilation,
    compile_counters,
    compile_fx,
    compiled_fx_graph_hash_hook,
    force_cacheable,
    graph_returns_tuple,
    hash_factors,
    in_tracing_context,
    load_compiled_artifact,
    lookup_fx_graph,
    metrics_context,
    remote_caches_off,
    save_compiled_artifact,
    shape_env_stand_in,
    standalone_compile,
    warm_up_cpu,
)

__all__ = [
    "CAPABILITIES",
    "FIRST_SERIES",
    "PATCH_TARGETS",
    "AlwaysHitShapeEnv",
    "autograd_cache_off",
    "capture_fx_compilation",
    "compile_counters",
    "compile_fx",
    "compiled_fx_graph_hash_hook",
    "force_cacheable",
    "graph_returns_tuple",
    "hash_factors",
    "in_tracing_context",
    "load_compiled_artifact",
    "lookup_fx_graph",
    "metrics_context",
    "remote_caches_off",
    "save_compiled_artifact",
    "shape_env_stand_in",
    "standalone_compile",
    "warm_up_cpu",
]

FIRST_SERIES: tuple[int, int] = (2, 9)

CAPABILITIES: frozenset[str] = _CAPABILITIES_2_08 | {"supports_standalone_from_graph"}
