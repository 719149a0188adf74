"""What every shim module exports. A conformance test checks each module against this Protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["FxCapture", "ShimModule"]


@dataclass
class FxCapture:
    """What a scoped ``compile_fx`` capture recorded.

    ``inner_compile`` is the wrapper to pass to ``compile_fx``; after the compile, ``keys`` holds the
    FX-graph-cache key of every graph Inductor compiled (one for an inference graph), ``hashed``
    the keys seen by the ``compiled_fx_graph_hash`` hook, and ``module_paths`` the generated Python
    modules' files.
    """

    inner_compile: Callable[..., Any] = field(repr=False)
    keys: list[str] = field(default_factory=list)
    hashed: list[str] = field(default_factory=list)
    module_paths: list[str] = field(default_factory=list)
    uncacheable: int = 0


class ShimModule(Protocol):
    """The surface a ``torchshim.shims.torch_2_NN`` module provides."""

    #: First series this module serves (e.g. ``(2, 6)``); later series may re-export it.
    FIRST_SERIES: tuple[int, int]
    #: Named capabilities this module provides on the series it serves.
    CAPABILITIES: frozenset[str]
    #: Dotted paths of every torch attribute this module may patch (checked for leaks by tests).
    PATCH_TARGETS: tuple[str, ...]

    # --- FX graph cache (InductorAdaptor) -------------------------------------------------------
    def capture_fx_compilation(self) -> AbstractContextManager[FxCapture]:
        """Record cache keys and module paths of what ``compile_fx`` compiles in the block."""
        ...

    def shape_env_stand_in(self) -> AbstractContextManager[None]:
        """Give cache look-ups a shape environment whose guards always pass."""
        ...

    def force_cacheable(self) -> AbstractContextManager[None]:
        """Make ``FxGraphCache._check_can_cache`` accept every graph (higher-order ops included)."""
        ...

    def metrics_context(self) -> AbstractContextManager[None]:
        """Enter Dynamo's metrics context where the series has one (a no-op otherwise)."""
        ...

    def remote_caches_off(self) -> AbstractContextManager[None]:
        """Turn off every remote cache Inductor and AOTAutograd would consult."""
        ...

    def autograd_cache_off(self) -> AbstractContextManager[None]:
        """Turn off the AOTAutograd cache, whose hits would skip the key capture."""
        ...

    def compile_fx(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        config_patches: dict[str, Any],
        inner_compile: Callable[..., Any],
    ) -> Callable[..., Any]:
        """Run Inductor's ``compile_fx`` with the given inner compile and config patches."""
        ...

    def compiled_fx_graph_hash_hook(self) -> AbstractContextManager[list[str]]:
        """Record every key ``compiled_fx_graph_hash`` returns in the block."""
        ...

    def lookup_fx_graph(
        self, key: str, example_inputs: Sequence[Any], graph: Any
    ) -> Callable[[list[Any]], Any] | None:
        """Look a compiled graph up by key (no compilation); ``None`` on a miss."""
        ...

    def graph_returns_tuple(self, graph: Any) -> bool:
        """Whether the FX graph returns a tuple (else a single value)."""
        ...

    # --- standalone_compile (InductorStandaloneAdaptor) ----------------------------------------
    def in_tracing_context(self) -> bool:
        """Whether a Dynamo trace is in progress (so its shape environment can be used)."""
        ...

    def standalone_compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        dynamic_shapes: str,
        config_patches: dict[str, Any],
    ) -> Any:
        """Compile with ``torch._inductor.standalone_compile``; the artifact is callable."""
        ...

    def save_compiled_artifact(self, artifact: Any, path: str, fmt: str) -> None:
        """``CompiledArtifact.save(path=, format=)``."""
        ...

    def load_compiled_artifact(self, path: str, fmt: str) -> Any:
        """``CompiledArtifact.load(path=, format=)``."""
        ...

    # --- factors, counters, warm-up -----------------------------------------------------------
    def hash_factors(self) -> dict[str, str]:
        """The compiler's cache-key factors: system, torch key, portable Inductor/functorch config."""
        ...

    def compile_counters(self) -> dict[str, int]:
        """Torch's own compile counters, flattened to ``"group.name" -> count``."""
        ...

    def warm_up_cpu(self) -> None:
        """Pay Inductor's one-time CPU initialisation (vector ISA probing) now."""
        ...
