"""InductorStandaloneAdaptor: Inductor's ``standalone_compile`` + ``CompiledArtifact``
(torch 2.8+). Each compiled graph is one self-describing artifact under the cache directory."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchshim.adaptors.base import (
    CACHE_FORMAT_VERSION,
    CompiledCallable,
    CompilerInterface,
    Handle,
    StandaloneHandle,
)
from torchshim.errors import (
    AdaptorConfigError,
    ArtifactMissingError,
    ArtifactUnreadableError,
    TorchShimError,
)
from torchshim.shims import active, capabilities, require_capability

__all__ = ["ARTIFACT_FORMATS", "InductorStandaloneAdaptor"]

log = logging.getLogger(__name__)

ARTIFACT_FORMATS = ("binary", "unpacked")


def _graph_digest(graph: Any, example_inputs: Sequence[Any], runtime_shape: int | None) -> str:
    """A name for an artifact when the caller gives no key: the graph's code and input metadata."""
    text = [str(getattr(graph, "code", graph)), repr(runtime_shape)]
    for value in example_inputs:
        shape = getattr(value, "shape", None)
        text.append(f"{type(value).__name__}:{getattr(value, 'dtype', '')}:{tuple(shape or ())}")
    return hashlib.sha256("\n".join(text).encode()).hexdigest()[:24]


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


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished artifact (file or directory) to its final name in one rename, so readers
    see the old artifact or the new one, never half of one."""
    if tmp.is_dir() and final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


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


class InductorStandaloneAdaptor(CompilerInterface):
    """``standalone_compile`` artifacts, saved in the binary format (one file) unless
    ``artifact_format="unpacked"`` is asked for."""

    name = "inductor_standalone"

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

    def _dynamic_shapes(self, runtime_shape: int | None) -> str:
        shim = active().module
        if isinstance(runtime_shape, int):
            return "from_example_inputs"
        if shim.in_tracing_context():
            return "from_tracing_context"  # inside a Dynamo backend: Dynamo's symbolic sizes
        if "supports_standalone_from_graph" in capabilities():
            return "from_graph"
        return "from_example_inputs"

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
        if self.cache_dir is None:  # set together with the base directory
            raise AdaptorConfigError("call initialize_cache(cache_dir) before compile")
        self._reject_parameter_constants(graph)
        shim = active().module
        config = self._compile_config(compiler_config, runtime_shape)
        dynamic = self._dynamic_shapes(runtime_shape)
        returns_tuple = shim.graph_returns_tuple(graph)
        try:
            with shim.remote_caches_off(), torch.no_grad():
                artifact = shim.standalone_compile(
                    _without_string_annotations(graph), example_inputs, dynamic, config
                )
        except TorchShimError:
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
        if self.disable_cache:
            return compiled, None
        name = key or _graph_digest(graph, example_inputs, runtime_shape)
        shape = "general" if runtime_shape is None else str(runtime_shape)
        final = self.cache_dir / f"artifact_shape_{shape}_{name}.{self.artifact_format}"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            shim.save_compiled_artifact(artifact, str(tmp), self.artifact_format)
            if self.artifact_format == "unpacked":
                # On CPU the artifact does not carry the compiled kernels: one load here builds
                # them inside the artifact directory, so later loads anywhere compile nothing.
                shim.load_compiled_artifact(str(tmp), self.artifact_format)
            _publish(tmp, final)
        except Exception as exc:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            log.warning("could not save standalone artifact %s: %s", final, exc)
            return compiled, None
        relative = self._relative(final)
        if relative is None:
            raise AdaptorConfigError(f"artifact {final} is outside the cache base directory")
        handle = StandaloneHandle(
            adaptor=self.name,
            format_version=CACHE_FORMAT_VERSION,
            compiler_hash=self._current_hash(),
            runtime_shape=runtime_shape,
            path=relative,
            artifact_format=self.artifact_format,
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
        checked = self._check_handle(handle, StandaloneHandle)
        self._reject_parameter_constants(graph)
        if checked.artifact_format not in ARTIFACT_FORMATS:
            raise ArtifactUnreadableError(
                f"unknown artifact format {checked.artifact_format!r}; recompile"
            )
        path = base / checked.path
        if not path.exists():
            raise ArtifactMissingError(
                f"standalone artifact {path} (graph {graph_index}) does not exist: it was pruned "
                "or not copied with the cache directory. Treat it as a miss and recompile."
            )
        shim = active().module
        try:
            artifact = shim.load_compiled_artifact(str(path), checked.artifact_format)
        except Exception as exc:
            raise ArtifactUnreadableError(
                f"standalone artifact {path} (graph {graph_index}) could not be loaded: "
                f"{type(exc).__name__}: {exc}. It is truncated, corrupt or from another torch; "
                "treat it as a miss and recompile."
            ) from exc
        return wrap_artifact(artifact, shim.graph_returns_tuple(graph))
