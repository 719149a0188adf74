"""InductorAdaptor: compile through Inductor's FX graph cache, load by cache key (torch 2.5+)."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

from torchshim.adaptors.base import (
    CACHE_FORMAT_VERSION,
    INDUCTOR_SUBDIR,
    CompiledCallable,
    CompilerInterface,
    Handle,
    InductorHandle,
)
from torchshim.errors import ArtifactMissingError, ArtifactUnreadableError, TorchShimError
from torchshim.shims import active

__all__ = ["InductorAdaptor", "as_tuple_output", "wrap_boxed"]

log = logging.getLogger(__name__)


def wrap_boxed(compiled: Callable[[list[Any]], Any], returns_tuple: bool) -> CompiledCallable:
    """Adapt a boxed Inductor callable (takes a list, returns a list) to the graph's calling
    convention: positional inputs, a single value or a tuple exactly as the graph returns."""
    if returns_tuple:

        def call_tuple(*args: Any) -> Any:
            return tuple(compiled(list(args)))

        return call_tuple

    def call_single(*args: Any) -> Any:
        return compiled(list(args))[0]

    return call_single


def as_tuple_output(compiled: CompiledCallable) -> CompiledCallable:
    """``compile_fx`` returns a list for a graph that returns a tuple; give back a tuple."""

    def call(*args: Any) -> Any:
        out = compiled(*args)
        return out if type(out) is tuple else tuple(out)

    return call


class InductorAdaptor(CompilerInterface):
    """Inductor with its FX graph cache; the handle is the cache key."""

    name = "inductor"

    def compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        compiler_config: dict[str, Any] | None,
        runtime_shape: int | None = None,
        key: str | None = None,
    ) -> tuple[CompiledCallable | None, Handle | None]:
        import torch

        self._require_cache()
        self._reject_parameter_constants(graph)
        shim = active().module
        config = self._compile_config(compiler_config, runtime_shape)
        if self.disable_cache:
            config["force_disable_caches"] = True
        else:
            config["fx_graph_cache"] = True
        config["fx_graph_remote_cache"] = False
        # Inductor mutates the graph it compiles; the caller's graph stays as it was.
        graph_copy = copy.deepcopy(graph)
        try:
            with contextlib.ExitStack() as stack:
                capture = stack.enter_context(shim.capture_fx_compilation())
                stack.enter_context(shim.shape_env_stand_in())
                stack.enter_context(shim.force_cacheable())
                stack.enter_context(shim.metrics_context())
                stack.enter_context(shim.remote_caches_off())
                stack.enter_context(shim.autograd_cache_off())
                stack.enter_context(torch.no_grad())  # inference graphs: no backward to compile
                compiled = shim.compile_fx(
                    graph_copy, example_inputs, config, capture.inner_compile
                )
        except TorchShimError:
            raise
        except Exception as exc:
            log.warning(
                "inductor rejected graph (runtime_shape=%s): %s: %s",
                runtime_shape,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return None, None
        if shim.graph_returns_tuple(graph):
            compiled = as_tuple_output(compiled)
        if self.disable_cache:
            return compiled, None
        keys = list(dict.fromkeys(capture.keys))
        if len(keys) != 1:
            log.warning(
                "inductor compiled the graph but %d cache key(s) were captured (%d hashed, %d "
                "uncacheable sub-graphs: a hashed graph without a key bypassed the FX graph "
                "cache); returning it without a handle, so it will recompile next time",
                len(keys),
                len(set(capture.hashed)),
                capture.uncacheable,
            )
            return compiled, None
        module_path = self._relative(capture.module_paths[0]) if capture.module_paths else None
        handle = InductorHandle(
            adaptor=self.name,
            format_version=CACHE_FORMAT_VERSION,
            compiler_hash=self._current_hash(),
            runtime_shape=runtime_shape,
            key=keys[0],
            module_path=module_path,
        )
        return compiled, handle

    def load(
        self,
        handle: Handle | str,
        graph: Any,
        example_inputs: Sequence[Any],
        graph_index: int,
        runtime_shape: int | None = None,
    ) -> CompiledCallable:
        base = self._require_cache()
        checked = self._check_handle(handle, InductorHandle)
        self._reject_parameter_constants(graph)
        shim = active().module
        try:
            # No metrics context here: on torch >= 2.11 a cache hit inside one that has no
            # dynamo_timed event raises "No toplevel event active".
            with shim.shape_env_stand_in(), shim.remote_caches_off():
                found = shim.lookup_fx_graph(checked.key, example_inputs, graph)
        except TorchShimError:
            raise
        except Exception as exc:
            raise ArtifactUnreadableError(
                f"FX graph cache entry {checked.key} (graph {graph_index}) could not be loaded: "
                f"{type(exc).__name__}: {exc}. Treat it as a miss and recompile."
            ) from exc
        if found is None:
            raise ArtifactMissingError(
                f"FX graph cache entry {checked.key} (graph {graph_index}) is not in "
                f"{base / INDUCTOR_SUBDIR}: it was pruned, never copied with the cache directory, "
                "or belongs to another torch build. Treat it as a miss and recompile."
            )
        return wrap_boxed(found, shim.graph_returns_tuple(graph))
