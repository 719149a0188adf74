"""EagerAdaptor: no compilation; the graph runs as it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchshim.adaptors.base import CompiledCallable, CompilerInterface, Handle
from torchshim.adaptors.handles import RuntimeShape

__all__ = ["EagerAdaptor"]


class EagerAdaptor(CompilerInterface):
    """Returns the FX graph itself and no handle (there is nothing to cache)."""

    name = "eager"
    uses_inductor = False
    stores_artifacts = False

    def compute_hash_factors(self) -> dict[str, str]:
        # Eager runs torch's own kernels: nothing compiler-specific to hash.
        return {"adaptor": self.name}

    def compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        compiler_config: dict[str, Any] | None,
        runtime_shape: RuntimeShape = None,
        key: str | None = None,
    ) -> tuple[CompiledCallable | None, Handle | None]:
        return graph, None

    def load(
        self,
        handle: Handle | str | None,
        graph: Any,
        example_inputs: Sequence[Any],
        graph_index: int,
        runtime_shape: RuntimeShape = None,
    ) -> CompiledCallable:
        # Nothing was stored: "loading" is running the graph.
        if handle is not None:
            self._check_handle(handle, Handle)
        result: CompiledCallable = graph
        return result
