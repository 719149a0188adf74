"""``StoredCompiler``: a compiler whose every compile becomes one cache-store entry, and the rules
that make a compiled graph the same in every process (one graph after a compile and a load, no
guard leaked into Dynamo, nothing tuned at load)."""

from __future__ import annotations

import abc
import contextlib
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torchshim.adaptors.base import CompiledCallable, CompilerInterface
from torchshim.adaptors.graphs import graph_digest, parameter_constants
from torchshim.adaptors.handles import (
    CACHE_FORMAT_VERSION,
    Handle,
    RuntimeShape,
    check_runtime_shape,
    shape_label,
)
from torchshim.adaptors.tuning import LiveDirectories, PendingTuning
from torchshim.errors import (
    AdaptorConfigError,
    ArtifactMissingError,
    ArtifactUnreadableError,
    CacheDirError,
    ForeignHandleError,
    TorchShimError,
    UnsupportedGraphError,
)
from torchshim.shims import GraphInputs, IsolatedCompile, active

__all__ = ["StoredCompiler"]

log = logging.getLogger(__name__)

_warned_float_graphs: set[tuple[str, tuple[str, ...]]] = set()
_warned: set[str] = set()


def _warn_once(token: str, message: str) -> None:
    if token not in _warned:
        _warned.add(token)
        log.warning("%s", message)


def _warn_float_symbols(adaptor: str, symbols: tuple[str, ...]) -> None:
    """Say once per graph shape why a graph with symbolic Python floats is a problem for caching."""
    key = (adaptor, symbols)
    if key in _warned_float_graphs:
        return
    _warned_float_graphs.add(key)
    log.warning(
        "%s: the graph has Python floats as symbolic inputs (%s), as Dynamo traces them unless "
        "floats are specialised. A compiling process would end with another graph than a "
        "loading process gets, so cached entries would never be found: torchshim asks Dynamo to "
        "re-trace with these floats specialised. Capture under `with torchshim.capture_config():` "
        "(Dynamo's specialize_float=True), as torchshim's backend does, to trace "
        "once.",
        adaptor,
        ", ".join(symbols),
    )


class StoredCompiler(CompilerInterface):
    """A compiler whose every compile becomes one cache-store entry: the compile writes into the
    entry's staging directory (Inductor's and Triton's caches pointed there), the entry is
    published when the compile succeeded, and a load reads a verified private copy of it.
    Subclasses provide :meth:`_compile` and :meth:`_load`."""

    handle_type: ClassVar[type[Handle]] = Handle

    def __init__(self) -> None:
        super().__init__()
        #: the directories this adaptor's graphs run from (see :mod:`torchshim.adaptors.tuning`)
        self._live = LiveDirectories()

    def save_tuning(self) -> int:
        """Add the kernel tuning results that the first calls of the graphs this adaptor
        compiled or loaded wrote (CUDA: Inductor tunes a kernel with several candidate
        configurations at its first call) to their cache entries, so that a later process loads
        the winners instead of tuning again. :meth:`close` does it too; the number of files
        added."""
        return self._live.save(self.store)

    def detach_tuning(self) -> PendingTuning | None:
        """Keep the directories this adaptor's graphs run from after :meth:`close`, in a
        :class:`~torchshim.adaptors.tuning.PendingTuning` whose ``save`` adds their tuning
        results to the entries and whose ``close`` (at process exit at the latest) removes
        them; ``None`` when there are none."""
        store = self.store
        if store is None or not self._live:
            return None
        items = [item for item in self._live.take() if store.detach(item.path)]
        return PendingTuning(store.root, items) if items else None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # never fails a close: the entries stay as they are
            self.save_tuning()
        self._live.take()
        super().close()

    def _entry_meta(self, handle: Handle, key: str) -> dict[str, Any]:
        return {
            "build": self._current_hash(),
            "adaptor": self.name,
            "runtime_shape": handle.runtime_shape,
            "handle": handle.to_json(),
            "factors": self.compute_hash_factors(),
            "key": key,
            # not part of the key (entry ids stay as they were); `torchshim cache check` says
            # when a bundle's entries were built by another Python
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            **self.extra_meta,
        }

    def _checkout(self, handle: Handle, graph_index: int) -> Path:
        """A verified private copy of the handle's entry (the files a load reads and imports)."""
        base = self._require_cache()
        store = self.store
        entry = str(getattr(handle, "entry", ""))
        if store is None or not store.enabled:
            raise ArtifactMissingError(
                f"graph {graph_index}: the cache directory {base} is not in use "
                f"({store.reason if store else 'no store'}); recompile"
            )
        existed = store.exists(entry)
        copy = store.checkout(entry, {"build": self._current_hash()})
        if copy is None:
            if existed:
                raise ArtifactUnreadableError(
                    f"graph {graph_index}: cache entry {entry} failed verification and was moved "
                    f"aside (see {base / 'quarantine'}); treat it as a miss and recompile"
                )
            raise ArtifactMissingError(
                f"graph {graph_index}: cache entry {entry} is not in {base}: it was pruned, never "
                "copied with the cache directory, or belongs to another torch build. Treat it as "
                "a miss and recompile."
            )
        return copy

    # -- graph rules ---------------------------------------------------------------------------
    def _compile_config(
        self, compiler_config: dict[str, Any] | None, runtime_shape: RuntimeShape
    ) -> dict[str, Any]:
        """The caller's Inductor config, tuned harder for a specific size (compiled once, served
        often: ``max_autotune``) unless the caller says otherwise.

        Not coordinate-descent tuning, unlike the reference design: Inductor runs it at the first
        call of a kernel, and a process that loads the kernel runs it again (pytorch/pytorch#172819,
        measured in matrix/GPU.md), so a loaded graph would tune, rebuild Triton kernels and write
        tuning results at load. A caller who asks for it gets it, with a warning."""
        shim = active().module
        config = dict(compiler_config or {})
        if runtime_shape is not None:  # a size or a range: compiled once, served often
            for name, value in shim.specialised_config().items():
                config.setdefault(name, value)
        config.update(shim.artifact_config())
        why = shim.tunes_at_load(config)
        if why is not None:
            _warn_once("tunes-at-load", why)
        return config

    def _same_graph_everywhere(self, graph: Any, example_inputs: Sequence[Any]) -> GraphInputs:
        """Describe the graph's inputs; inside a Dynamo trace, first have Dynamo re-trace a graph
        that carries Python floats as inputs with them specialised, in compiling and loading
        processes alike, so that both end with the same graph."""
        shim = active().module
        described = shim.describe_graph_inputs(graph, example_inputs)
        if described.float_symbols:
            _warn_float_symbols(self.name, described.float_symbols)
            if shim.in_tracing_context():
                shim.specialize_float_inputs(graph)  # raises Dynamo's restart
        return described

    def _passthrough(self) -> tuple[type[BaseException], ...]:
        """Exceptions a compile lets through untouched: torchshim's own and Dynamo's control
        flow (a request to re-trace is never a rejected graph)."""
        return (TorchShimError, *active().module.dynamo_control_flow())

    def _compile_inputs(
        self, graph: Any, example_inputs: Sequence[Any], runtime_shape: RuntimeShape
    ) -> contextlib.AbstractContextManager[IsolatedCompile]:
        """Fake inputs in a shape environment of their own (Dynamo's is never touched), with the
        batch symbol bound to ``runtime_shape`` when the compile is specialised, or bounded to
        it when it is a range."""
        shim = active().module
        try:
            shape = check_runtime_shape(runtime_shape)
        except ValueError as exc:
            raise AdaptorConfigError(str(exc)) from None
        described = self._same_graph_everywhere(graph, example_inputs)
        bindings: dict[str, int] = {}
        ranges: dict[str, tuple[int, int]] = {}
        if described.batch_symbol is not None:
            if isinstance(shape, tuple):
                ranges[described.batch_symbol] = shape
            elif shape is not None:
                bindings[described.batch_symbol] = shape
        return shim.isolated_inputs(graph, example_inputs, bindings, ranges)

    def _accept_guards(
        self,
        guards: Sequence[str],
        graph: Any,
        example_inputs: Sequence[Any],
        runtime_shape: RuntimeShape,
    ) -> bool:
        """Whether a compile that made Inductor assume ``guards`` can be used. A specialised
        compile must not depend on any size but the batch (it would serve calls those guards do
        not hold for, and Dynamo's frame must not be guarded by it); a general one makes
        Dynamo guard on them here, as a loading process will."""
        if not guards:
            return True
        if runtime_shape is not None:
            log.warning(
                "%s: specialising for batch %s made Inductor assume conditions on other "
                "input sizes (%d guard(s), e.g. %s); not using it, the general graph serves it",
                self.name,
                shape_label(runtime_shape),
                len(guards),
                guards[0][:120],
            )
            return False
        return active().module.install_guards(graph, example_inputs, guards)

    def _replay_guards(
        self, handle: Handle, graph: Any, example_inputs: Sequence[Any], graph_index: int
    ) -> None:
        guards: tuple[str, ...] = getattr(handle, "guards", ())
        if not guards:
            return
        try:
            holds = active().module.install_guards(graph, example_inputs, guards)
        except (ValueError, TypeError) as exc:
            raise ForeignHandleError(
                f"graph {graph_index}: the handle's guards cannot be applied to this graph "
                f"({exc}); recompile"
            ) from exc
        if not holds:
            raise ForeignHandleError(
                f"graph {graph_index}: the artifact was compiled assuming conditions on the input "
                "sizes that these inputs do not meet; recompile for them"
            )

    def _reject_parameter_constants(self, graph: Any) -> None:
        consts = parameter_constants(graph)
        if consts:
            shown = ", ".join(consts[:5]) + (" ..." if len(consts) > 5 else "")
            raise UnsupportedGraphError(
                f"{self.name}: the graph reads parameters/buffers as get_attr constants ({shown}). "
                "Compiled artifacts of such graphs expect them as inputs and would fail when "
                "called. Lift them to inputs: capture the model with Dynamo (torch.compile "
                "with a torchshim backend lifts parameters), or trace a function that takes the "
                "weights as arguments."
            )

    # -- the contract --------------------------------------------------------------------------

    @abc.abstractmethod
    def _compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        config: dict[str, Any],
        runtime_shape: RuntimeShape,
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
        runtime_shape: RuntimeShape = None,
        key: str | None = None,
    ) -> tuple[CompiledCallable | None, Handle | None]:
        self._require_cache()
        self._reject_parameter_constants(graph)
        config = self._compile_config(compiler_config, runtime_shape)
        store = self.store

        def unstored() -> tuple[CompiledCallable | None, Handle | None]:
            with (
                tempfile.TemporaryDirectory(prefix="torchshim-compile-") as workdir,
                self.machine_probes(),
            ):
                fn, _fields = self._compile(
                    graph, example_inputs, config, runtime_shape, Path(workdir)
                )
            return fn, None

        if not self.persists or store is None:
            return unstored()
        text_key = key or graph_digest(graph, example_inputs)
        entry = self.entry_id(text_key, runtime_shape)
        with contextlib.ExitStack() as stack:
            try:
                writer = stack.enter_context(store.writer(entry, text_key))
            except (OSError, CacheDirError) as exc:  # no room to stage: compile, store nothing
                log.warning("%s: cannot stage in %s (%s); not storing", self.name, store.root, exc)
                return unstored()
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
            writer.keep = True  # the graph's kernels run from there (see save_tuning)
            try:
                writer.commit(self._entry_meta(handle, text_key))
            except (OSError, CacheDirError) as exc:  # a full disk, a stray file in the way
                log.warning(
                    "%s: compiled, but could not store entry %s in %s (%s); it will be compiled "
                    "again next time",
                    self.name,
                    entry,
                    store.root,
                    exc,
                )
                return fn, None
            self._live.add(entry, writer.path)  # its kernels were loaded from there
        return fn, handle

    def load(
        self,
        handle: Handle | str,
        graph: Any,
        example_inputs: Sequence[Any],
        graph_index: int,
        runtime_shape: RuntimeShape = None,
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
        self._live.add(str(getattr(checked, "entry", "")), workdir)
        self._replay_guards(checked, graph, example_inputs, graph_index)
        with self.machine_probes():
            return self._load(checked, workdir, graph, example_inputs, graph_index)
