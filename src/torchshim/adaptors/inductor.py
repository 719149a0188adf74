"""InductorAdaptor: compile through Inductor's FX graph cache, load by cache key (torch 2.5+).

Each compile runs with Inductor's cache pointed at a fresh cache-store entry, so the entry holds
the FX-graph-cache entry and everything it loads (generated module, C++ ``.so``, Triton kernels);
a load looks the key up in a verified private copy of that entry."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torchshim.adaptors.base import CompiledCallable
from torchshim.adaptors.handles import Handle, InductorHandle, RuntimeShape
from torchshim.adaptors.stored import StoredCompiler
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


class InductorAdaptor(StoredCompiler):
    """Inductor with its FX graph cache; the handle is the cache-store entry and the key."""

    name = "inductor"
    handle_type: ClassVar[type[Handle]] = InductorHandle

    def _trivial(self, handle: Any) -> bool:
        return handle.key is None

    def _compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        config: dict[str, Any],
        runtime_shape: RuntimeShape,
        workdir: Path,
    ) -> tuple[CompiledCallable | None, dict[str, Any] | None]:
        import torch

        shim = active().module
        config.update(shim.fx_cache_config(self.persists))
        # Inductor mutates the graph it compiles; the caller's graph stays as it was.
        graph_copy = copy.deepcopy(graph)
        try:
            with contextlib.ExitStack() as stack:
                capture = stack.enter_context(shim.capture_fx_compilation())
                stack.enter_context(shim.private_kernel_cache(str(workdir)))
                stack.enter_context(shim.shape_env_stand_in())
                stack.enter_context(shim.force_cacheable())
                stack.enter_context(shim.metrics_context())
                stack.enter_context(shim.remote_caches_off())
                stack.enter_context(shim.autograd_cache_off())
                stack.enter_context(torch.no_grad())  # inference graphs: no backward to compile
                isolated = stack.enter_context(
                    self._compile_inputs(graph, example_inputs, runtime_shape)
                )
                compiled = shim.compile_fx(
                    graph_copy, isolated.inputs, config, capture.inner_compile
                )
            if not self._accept_guards(isolated.guards, graph, example_inputs, runtime_shape):
                return None, None
        except self._passthrough():
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
        if not self.persists:
            return compiled, None
        keys: list[str | None] = list(dict.fromkeys(capture.keys))
        if not keys and capture.trivial and capture.uncacheable == capture.trivial:
            keys = [None]  # nothing to compile: a handle that says the graph runs as it is
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
        module_path = None
        for path in capture.module_paths:
            with contextlib.suppress(ValueError):
                module_path = Path(path).absolute().relative_to(workdir.absolute()).as_posix()
        if keys[0] is None:
            # a load runs such a graph as it is; so does the compiling process (AOTAutograd's
            # wrapper would mark its outputs' sizes dynamic for Dynamo, a load's would not)
            compiled = graph
        else:
            compiled = self._as_loaded(keys[0], workdir, graph, example_inputs, compiled)
        return compiled, {"key": keys[0], "module_path": module_path, "guards": isolated.guards}

    def _as_loaded(
        self,
        key: str,
        workdir: Path,
        graph: Any,
        example_inputs: Sequence[Any],
        compiled: CompiledCallable,
    ) -> CompiledCallable:
        """The callable a load of ``key`` gives, for the compiling process to run too. A load
        gets Inductor's graph without AOTAutograd's runtime wrapper around it, which marks the
        outputs' symbolic sizes dynamic for Dynamo (and regenerates outputs aliasing an input).
        Dynamo traces the frame after a graph break from those outputs, so the next graph it
        hands the backend could differ between a compiling and a loading process (it did on
        2.8), and the loading process would find no artifact for it."""
        try:
            found = self._lookup(key, workdir, graph, example_inputs, -1, workdir.name)
        except TorchShimError as exc:  # the entry was just written: this is not expected
            log.warning(
                "%s: the graph just compiled does not load (%s); running it as compiled",
                self.name,
                exc,
            )
            return compiled
        return found

    def _lookup(
        self,
        key: str,
        workdir: Path,
        graph: Any,
        example_inputs: Sequence[Any],
        index: int,
        entry: str,
    ) -> CompiledCallable:
        shim = active().module
        try:
            # No metrics context here: on torch >= 2.11 a cache hit inside one that has no
            # dynamo_timed event raises "No toplevel event active".
            with (
                shim.private_kernel_cache(str(workdir)),
                shim.kernels_in_process(),
                shim.shape_env_stand_in(),
                shim.remote_caches_off(),
            ):
                found = shim.lookup_fx_graph(key, example_inputs, graph)
        except TorchShimError:
            raise
        except Exception as exc:
            raise ArtifactUnreadableError(
                f"FX graph cache entry {key} (graph {index}) could not be loaded: "
                f"{type(exc).__name__}: {exc}. Treat it as a miss and recompile."
            ) from exc
        if found is None:
            raise ArtifactMissingError(
                f"FX graph cache entry {key} (graph {index}) is not in cache entry {entry} "
                "(it belongs to another torch build). Treat it as a miss and recompile."
            )
        return wrap_boxed(found, shim.graph_returns_tuple(graph))

    def _load(
        self, handle: Any, workdir: Path, graph: Any, example_inputs: Sequence[Any], index: int
    ) -> CompiledCallable:
        return self._lookup(handle.key, workdir, graph, example_inputs, index, handle.entry)
