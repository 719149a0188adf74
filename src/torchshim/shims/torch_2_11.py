"""Shim for torch 2.11 to 2.15.

What changed from 2.10, and broke the reference design twice:

* while hashing a graph, ``FxGraphHashDetails`` reads ``_get_shape_env().var_to_hint_override``, so
  the shape-env stand-in must carry that attribute;
* a cache hit records its result through ``CompileEventLogger``, which raises "No toplevel event
  active" when a metrics context is open without a ``dynamo_timed`` event. Look-ups made here never
  open the metrics context (they need none), so nothing changes in ``lookup_fx_graph``.

2.12 - 2.15 only add optional parameters (``compile_region_name``, ``donate_graph_module``,
``fake_mode``, ``_check_can_cache`` keywords) and a ``version`` key in ``CacheBase.get_system()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torchshim._patching import patch_attr
from torchshim.shims.torch_2_05 import AlwaysHitShapeEnv as _AlwaysHitShapeEnv210
from torchshim.shims.torch_2_05 import _fx_graph_cache
from torchshim.shims.torch_2_08 import _aot_autograd_cache
from torchshim.shims.torch_2_09 import (
    CAPABILITIES,
    PATCH_TARGETS,
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

FIRST_SERIES: tuple[int, int] = (2, 11)


class AlwaysHitShapeEnv(_AlwaysHitShapeEnv210):
    """The 2.5 - 2.10 stand-in plus what torch 2.11+ reads while hashing a graph."""

    def __init__(self) -> None:
        super().__init__()
        # torch >= 2.11: FxGraphHashDetails.__init__ reads it (hint overrides are part of the key).
        self.var_to_hint_override: dict[Any, int] = {}


@contextlib.contextmanager
def shape_env_stand_in() -> Iterator[None]:
    stand_in = AlwaysHitShapeEnv()
    getter = staticmethod(lambda: stand_in)
    with (
        patch_attr(_fx_graph_cache(), "_get_shape_env", getter),
        patch_attr(_aot_autograd_cache(), "_get_shape_env", getter),
    ):
        yield
