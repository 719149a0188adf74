"""``StoredCompiler``: a compiler whose every compile becomes one cache-store entry."""

from __future__ import annotations

import abc
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torchshim.adaptors.base import CompiledCallable, CompilerInterface
from torchshim.adaptors.graphs import graph_digest
from torchshim.adaptors.handles import CACHE_FORMAT_VERSION, Handle

__all__ = ["StoredCompiler"]


class StoredCompiler(CompilerInterface):
    """A compiler whose every compile becomes one cache-store entry: the compile writes into the
    entry's staging directory (Inductor's and Triton's caches pointed there), the entry is
    published when the compile succeeded, and a load reads a verified private copy of it.
    Subclasses provide :meth:`_compile` and :meth:`_load`."""

    handle_type: ClassVar[type[Handle]] = Handle

    @abc.abstractmethod
    def _compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        config: dict[str, Any],
        runtime_shape: int | None,
        workdir: Path,
    ) -> tuple[CompiledCallable | None, dict[str, Any] | None]:
        """Compile with everything written under ``workdir``; the callable and the handle's own
        fields, or ``None`` fields when the result cannot be stored."""

    @abc.abstractmethod
    def _load(
        self, handle: Any, workdir: Path, graph: Any, example_inputs: Sequence[Any], index: int
    ) -> CompiledCallable:
        """Load ``handle`` from ``workdir`` (a verified copy of its entry)."""

    def _trivial(self, handle: Any) -> bool:
        """Whether the handle says the graph runs as it is (nothing was compiled)."""
        return False

    def compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        compiler_config: dict[str, Any] | None,
        runtime_shape: int | None = None,
        key: str | None = None,
    ) -> tuple[CompiledCallable | None, Handle | None]:
        self._require_cache()
        self._reject_parameter_constants(graph)
        config = self._compile_config(compiler_config, runtime_shape)
        store = self.store
        if not self.persists or store is None:
            with (
                tempfile.TemporaryDirectory(prefix="torchshim-compile-") as workdir,
                self.machine_probes(),
            ):
                fn, _fields = self._compile(
                    graph, example_inputs, config, runtime_shape, Path(workdir)
                )
            return fn, None
        text_key = key or graph_digest(graph, example_inputs)
        entry = self.entry_id(text_key, runtime_shape)
        with store.writer(entry, text_key) as writer:
            with self.machine_probes():
                fn, fields = self._compile(
                    graph, example_inputs, config, runtime_shape, writer.path
                )
            if fn is None or fields is None:
                return fn, None
            factory: Any = self.handle_type
            handle = factory(
                adaptor=self.name,
                format_version=CACHE_FORMAT_VERSION,
                compiler_hash=self._current_hash(),
                runtime_shape=runtime_shape,
                entry=entry,
                **fields,
            )
            writer.commit(self._entry_meta(handle, text_key))
        return fn, handle

    def load(
        self,
        handle: Handle | str,
        graph: Any,
        example_inputs: Sequence[Any],
        graph_index: int,
        runtime_shape: int | None = None,
    ) -> CompiledCallable:
        self._require_cache()
        checked = self._check_handle(handle, self.handle_type)
        self._reject_parameter_constants(graph)
        self._same_graph_everywhere(graph, example_inputs)
        if self._trivial(checked):
            self._replay_guards(checked, graph, example_inputs, graph_index)
            result: CompiledCallable = graph
            return result
        workdir = self._checkout(checked, graph_index)
        self._replay_guards(checked, graph, example_inputs, graph_index)
        with self.machine_probes():
            return self._load(checked, workdir, graph, example_inputs, graph_index)
