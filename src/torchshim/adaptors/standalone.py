"""InductorStandaloneAdaptor: Inductor's ``standalone_compile`` + ``CompiledArtifact``
(torch 2.8+). Each compile is one cache-store entry holding the saved artifact and the kernels it
loads (Inductor's caches point into the entry while compiling)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torchshim import config
from torchshim.adaptors.base import CompiledCallable
from torchshim.adaptors.handles import Handle, RuntimeShape, StandaloneHandle
from torchshim.adaptors.stored import StoredCompiler
from torchshim.errors import AdaptorConfigError, ArtifactUnreadableError
from torchshim.shims import active, capabilities, require_capability

__all__ = ["ARTIFACT_FORMATS", "InductorStandaloneAdaptor"]

log = logging.getLogger(__name__)

ARTIFACT_FORMATS = ("binary", "unpacked")
#: artifact_format of a handle for a graph without operations (nothing compiled; runs as is)
NOTHING_COMPILED = "none"


def _without_string_annotations(graph: Any) -> Any:
    """A copy of ``graph`` without placeholder annotations that are plain strings.

    ``symbolic_trace`` copies a function's annotations into the graph; under
    ``from __future__ import annotations`` they are strings, which AOTAutograd's cache key cannot
    format, so ``CompiledArtifact.save`` fails ("no aot_autograd artifacts"). They carry no
    meaning for compilation.
    """
    nodes = getattr(getattr(graph, "graph", None), "nodes", ())
    if not any(isinstance(getattr(n, "type", None), str) for n in nodes):
        return graph
    clean = copy.deepcopy(graph)
    for node in clean.graph.nodes:
        if isinstance(node.type, str):
            node.type = None
    clean.recompile()
    return clean


def wrap_artifact(artifact: Any, returns_tuple: bool) -> CompiledCallable:
    """A ``CompiledArtifact`` takes positional inputs; it returns a list for Dynamo graphs and the
    graph's own structure for others. Give back exactly what the graph returns."""
    if returns_tuple:

        def call_tuple(*args: Any) -> Any:
            out = artifact(*args)
            return out if type(out) is tuple else tuple(out)

        return call_tuple

    def call_single(*args: Any) -> Any:
        out = artifact(*args)
        return out[0] if type(out) is list or type(out) is tuple else out

    return call_single


class InductorStandaloneAdaptor(StoredCompiler):
    """``standalone_compile`` artifacts, saved in the binary format (one file) unless
    ``artifact_format="unpacked"`` is asked for."""

    name = "inductor_standalone"
    handle_type: ClassVar[type[Handle]] = StandaloneHandle

    def __init__(self, artifact_format: str = "binary") -> None:
        super().__init__()
        require_capability(
            "supports_standalone_compile",
            "Use make_adaptor('inductor') (every series) or make_adaptor('auto').",
        )
        if artifact_format not in ARTIFACT_FORMATS:
            raise AdaptorConfigError(
                f"artifact_format must be one of {ARTIFACT_FORMATS}, got {artifact_format!r}"
            )
        self.artifact_format = artifact_format
        #: graphs this adaptor loaded without torch's loader (see shims/_direct.py)
        self.direct_loads = 0

    def _trivial(self, handle: Any) -> bool:
        return bool(handle.artifact_format == NOTHING_COMPILED)

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
        # Always in torchshim's own copy of the inputs' shape environment (see
        # shims/_shape_env.py), which the compile finds as its tracing context.
        dynamic = "from_tracing_context"
        returns_tuple = shim.graph_returns_tuple(graph)
        try:
            with (
                shim.private_kernel_cache(str(workdir)),
                shim.remote_caches_off(),
                shim.force_cacheable(),
                shim.force_autograd_cacheable(),
                shim.compiled_fx_graph_hash_hook() as hashed,
                torch.no_grad(),
                self._compile_inputs(graph, example_inputs, runtime_shape) as isolated,
            ):
                artifact = shim.standalone_compile(
                    _without_string_annotations(graph), isolated.inputs, dynamic, config
                )
            if not self._accept_guards(isolated.guards, graph, example_inputs, runtime_shape):
                return None, None
        except self._passthrough():
            raise
        except Exception as exc:
            log.warning(
                "standalone_compile rejected graph (runtime_shape=%s, dynamic_shapes=%s): %s: %s",
                runtime_shape,
                dynamic,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return None, None
        compiled = wrap_artifact(artifact, returns_tuple)
        if not self.persists:
            return compiled, None
        name = "artifact" if self.artifact_format == "unpacked" else "artifact.bin"
        path = workdir / name
        try:
            with shim.private_kernel_cache(str(workdir)):
                shim.save_compiled_artifact(artifact, str(path), self.artifact_format)
                if self.artifact_format == "unpacked":
                    # On CPU the artifact does not carry the compiled kernels: one load here
                    # builds them inside the artifact directory, so later loads compile nothing.
                    shim.load_compiled_artifact(str(path), self.artifact_format)
                else:
                    self._plan_direct_load(graph, workdir)
        except Exception as exc:
            if not hashed:
                # Inductor hashed no graph: nothing was compiled (a graph of views and sizes),
                # so there is nothing to save, and the graph runs as it is.
                # A load runs it as it is, and so does this process: the artifact's AOTAutograd
                # wrapper would mark its outputs' sizes dynamic for Dynamo, which a load does not
                # (the next frame's graph would then differ between the two processes).
                fields = {"path": "", "artifact_format": NOTHING_COMPILED}
                return graph, {**fields, "guards": isolated.guards}
            log.warning("could not save the standalone artifact: %s", exc)
            return compiled, None
        return compiled, {
            "path": name,
            "artifact_format": self.artifact_format,
            "guards": isolated.guards,
        }

    def _plan_direct_load(self, graph: Any, workdir: Path) -> None:
        """Plan a load that skips torch's loader (see shims/_direct.py); never fails a compile."""
        if "supports_direct_cpu_load" not in capabilities():
            return
        try:
            why_not = active().module.plan_direct_load(str(workdir), graph)
        except Exception as exc:  # a planning bug costs the fast load, never the compile
            why_not = f"{type(exc).__name__}: {exc}"
        if why_not is not None:
            log.debug("graph loads through torch's loader: %s", why_not)

    def _direct_load(self, handle: Any, workdir: Path, index: int) -> CompiledCallable | None:
        if (
            handle.artifact_format != "binary"
            or "supports_direct_cpu_load" not in capabilities()
            or not (workdir / "direct" / "plan.json").is_file()
            or not config.direct_load()
        ):
            return None
        try:
            loaded = active().module.direct_load(str(workdir))
        except Exception as exc:
            log.warning(
                "cache entry %s (graph %d): the direct load failed (%s: %s); loading through "
                "torch's loader",
                handle.entry,
                index,
                type(exc).__name__,
                exc,
            )
            return None
        self.direct_loads += 1
        return loaded

    def _load(
        self, handle: Any, workdir: Path, graph: Any, example_inputs: Sequence[Any], index: int
    ) -> CompiledCallable:
        if handle.artifact_format not in ARTIFACT_FORMATS:
            raise ArtifactUnreadableError(
                f"unknown artifact format {handle.artifact_format!r}; recompile"
            )
        shim = active().module
        direct = self._direct_load(handle, workdir, index)
        if direct is not None:
            return wrap_artifact(direct, shim.graph_returns_tuple(graph))
        path = workdir / handle.path
        try:
            with shim.private_kernel_cache(str(workdir)), shim.kernels_in_process():
                artifact = shim.load_compiled_artifact(str(path), handle.artifact_format)
        except Exception as exc:
            raise ArtifactUnreadableError(
                f"standalone artifact of cache entry {handle.entry} (graph {index}) could not be "
                f"loaded: {type(exc).__name__}: {exc}. It is from another torch or damaged; "
                "treat it as a miss and recompile."
            ) from exc
        return wrap_artifact(artifact, shim.graph_returns_tuple(graph))
