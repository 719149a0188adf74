"""The ``torch.compile`` backend: one Dynamo trace, a general graph plus one graph per served batch
size compiled (or loaded) up front, and a dispatcher by batch size.

Every compiled graph is one cache-store entry, keyed by the graph (its code and input metadata),
the adaptor's compiler hash, the compiler config, torchshim's format version and the rank, so a
later process with the same model and cache loads instead of compiling. One process compiles a
key while others wait for its lock and then load it.

    model = torch.compile(model, backend=torchshim.backend(cache_dir="/cache", compile_sizes=[1, 8]))

``torch.compile(model, backend="torchshim")`` works too, configured by ``TORCHSHIM_*`` variables
(see :func:`registered_backend`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchshim import config
from torchshim._stable import stable_json
from torchshim.adaptors import (
    CACHE_FORMAT_VERSION,
    CompilerInterface,
    graph_digest,
    graph_inputs,
    make_adaptor,
)
from torchshim.adaptors.graphs import batch_dims, mutated_inputs
from torchshim.adaptors.handles import RuntimeShape, check_runtime_shape, shape_label
from torchshim.adaptors.tuning import save_after_first_calls
from torchshim.cache import CacheStore, default_cache_dir, remote_from_environment
from torchshim.errors import CacheLockTimeout, ConfigError, LoadError
from torchshim.options import BackendOptions, options_from
from torchshim.serving import (
    BatchLayout,
    GraphedVariant,
    ServingStats,
    input_spec,
    make_dispatcher,
    static_batch,
)
from torchshim.shims import active

__all__ = [
    "BACKEND_FORMAT",
    "Backend",
    "BackendStats",
    "backend",
    "compile",
    "registered_backend",
]

log = logging.getLogger(__name__)

#: Part of every backend key: bump when the key's composition changes.
BACKEND_FORMAT = 1
#: A size whose specialised compile was refused (it would depend on other sizes) is recorded so
#: that later processes use the general graph for it without trying again.
_GENERAL = "general"


@dataclass
class BackendStats:
    """What one backend did in this process."""

    graphs: int = 0
    #: graphs compiled by a compiler that stores artifacts (a warm start has none)
    compiled: int = 0
    loaded: int = 0
    #: of those, graphs loaded without torch's loader (CPU, see shims/_direct.py)
    direct_loads: int = 0
    #: graphs an adaptor that compiles nothing (eager) runs as traced
    eager: int = 0
    #: compiles that could not use the cache (another process held the lock too long)
    uncached: int = 0
    general_fallbacks: int = 0
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    #: calls per variant, CUDA graphs captured and their memory, capture seconds
    serving: ServingStats = field(default_factory=ServingStats)
    #: where the start's time went (seconds): reading and verifying entries, loading graphs
    #: (verification included), compiling, and for ``torchshim.compile`` the whole first call
    #: and Dynamo's part of it (the first call less the backend's own time and CUDA capture)
    verify_seconds: float = 0.0
    load_seconds: float = 0.0
    compile_seconds: float = 0.0
    first_call_seconds: float = 0.0
    dynamo_seconds: float = 0.0
    #: torch 2.10+: reading and checking the saved Dynamo output (its graphs load at their first
    #: call, counted in ``load_seconds``); whether it was used; traces saved in this process
    program_seconds: float = 0.0
    program_loaded: bool = False
    traced: int = 0

    def phases(self) -> dict[str, float]:
        return {
            "dynamo_s": round(self.dynamo_seconds, 3),
            "program_s": round(self.program_seconds, 3),
            "verify_s": round(self.verify_seconds, 3),
            "load_s": round(self.load_seconds, 3),
            "compile_s": round(self.compile_seconds, 3),
            "capture_s": round(self.serving.capture_seconds, 3),
            "first_run_s": round(self.serving.first_run_seconds, 3),
            "first_call_s": round(self.first_call_seconds, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "graphs": self.graphs,
            "compiled": self.compiled,
            "loaded": self.loaded,
            "direct_loads": self.direct_loads,
            "eager": self.eager,
            "uncached": self.uncached,
            "general_fallbacks": self.general_fallbacks,
            "trace_loaded": self.program_loaded,
            "traces_saved": self.traced,
            "seconds": round(self.seconds, 3),
            "serving": self.serving.as_dict(),
            "phases": self.phases(),
        }


class Backend:
    """A ``torch.compile`` backend that compiles each graph for the general shape and for every
    size in ``compile_sizes`` up front, stores everything, and loads it on later starts."""

    def __init__(
        self, options: str | os.PathLike[str] | BackendOptions | None = None, /, **settings: Any
    ) -> None:
        """``Backend(BackendOptions(...))``, or ``Backend(cache_dir, compile_sizes=[...], ...)``
        with the settings of :class:`~torchshim.options.BackendOptions` as keywords."""
        config.check_environment()
        self.options = options_from(options, settings)
        self.compile_sizes = self.options.sizes
        self.compile_ranges = self.options.ranges
        self.adaptor_name = self.options.adaptor
        self.compiler_config = dict(self.options.compiler_config)
        self.rank = self.options.rank
        base = self.options.cache_dir or default_cache_dir()
        self.root = base.absolute() / f"rank_{self.rank if self.rank is not None else 0}"
        self.lock_timeout = self.options.effective_lock_timeout()
        self.stats = BackendStats()
        self.serving = self.stats.serving
        self._pool: Any = None
        self._graphed: list[GraphedVariant] = []
        self._lock = threading.Lock()
        #: set by torchshim.warm while a trace is saved (torch 2.10+); see there
        self._on_graph: Callable[[Any, Sequence[Any], Callable[..., Any]], Any] | None = None
        self._spare: dict[str, Callable[..., Any]] = {}
        self._static: frozenset[int] | None = None
        #: the key (``graph_digest``) of the graph compiled or loaded last
        self.last_digest = ""
        # fail early, before Dynamo traces anything: unknown adaptor, unsupported torch, a
        # compiler config Inductor would reject
        adaptor = make_adaptor(self.adaptor_name)
        remote_from_environment(self.options.remote)  # a bad URL, no Redis client: ConfigError
        if adaptor.uses_inductor and self.compiler_config:
            problems = active().module.check_compiler_config(self.compiler_config)
            if problems:
                raise ConfigError(
                    "compiler_config is not valid Inductor config: " + "; ".join(problems)
                )

    # -- the key --------------------------------------------------------------------------------
    def key_factors(
        self, adaptor: CompilerInterface, gm: Any, example_inputs: Sequence[Any]
    ) -> dict[str, str]:
        """Everything a stored graph depends on; a process whose factors differ compiles."""
        return {
            "graph": graph_digest(gm, example_inputs),
            "compiler": adaptor.compute_hash(),
            "compiler_config": stable_json(self.compiler_config),
            "backend_format": f"{BACKEND_FORMAT}.{CACHE_FORMAT_VERSION}",
            "rank": str(self.rank if self.rank is not None else 0),
        }

    @staticmethod
    def _key(factors: dict[str, str]) -> str:
        return hashlib.sha256(stable_json(factors).encode()).hexdigest()[:32]

    # -- the backend ----------------------------------------------------------------------------
    def __call__(self, gm: Any, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        with self._lock:
            # graphs a failed attempt to save the trace built are reused by the trace after it
            spare = self._spare.pop(graph_digest(gm, example_inputs), None) if self._spare else None
            if spare is not None:
                self.stats.graphs += 1
            fn = spare if spare is not None else self._compile_graph(gm, example_inputs)
            return fn if self._on_graph is None else self._on_graph(gm, example_inputs, fn)

    @contextlib.contextmanager
    def _adaptor(self) -> Iterator[CompilerInterface]:
        adaptor = make_adaptor(self.adaptor_name)
        adaptor.remote = self.options.remote
        try:
            adaptor.initialize_cache(self.root)
            yield adaptor
        finally:
            adaptor.close()

    def _compile_graph(self, gm: Any, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        started = time.perf_counter()
        index = self.stats.graphs
        with self._adaptor() as adaptor:
            factors = self.key_factors(adaptor, gm, example_inputs)
            self.last_digest = factors["graph"]
            key = self._key(factors)
            adaptor.extra_meta = {"backend_factors": factors, "graph_index": index}
            described = graph_inputs(gm, example_inputs)
            position = described.batch_position
            # A graph with a static batch serves one size: nothing to specialise. Dynamo
            # specialises batch sizes 0 and 1 (a graph of their own), so a symbolic graph never
            # sees them; a range is cut to what the symbolic graph can see.
            shapes: list[RuntimeShape] = []
            if position is not None:
                shapes += [s for s in self.compile_sizes if s >= 2]
                shapes += [(max(lo, 2), hi) for lo, hi in self.compile_ranges if hi >= 2]
            variants: dict[RuntimeShape, Callable[..., Any]] = {}
            for shape in (None, *shapes):
                fn = self._one(adaptor, gm, example_inputs, index, key, shape, factors)
                if fn is not None:
                    variants[shape] = fn
            if adaptor.store is not None:
                self.stats.verify_seconds += adaptor.store.verify_seconds
            # on CUDA the kernels tune at their first call, in the directories they were loaded
            # from: kept until then, the results added to the entries (adaptors/tuning.py)
            pending = adaptor.detach_tuning() if _on_cuda(example_inputs) else None
        if pending is not None:
            variants = save_after_first_calls(variants, pending)
        layout = self._layout(gm, example_inputs, described.batch_symbol, position)
        variants = self._graph_variants(index, variants, layout, example_inputs)
        self.stats.graphs += 1
        self.stats.seconds += time.perf_counter() - started
        return make_dispatcher(variants, layout, self.serving, pad_batch=self.options.pad_batch)

    # -- serving ----------------------------------------------------------------------------------
    def _layout(
        self,
        gm: Any,
        example_inputs: Sequence[Any],
        batch_symbol: str | None,
        position: tuple[int, int | None] | None,
    ) -> BatchLayout:
        import torch

        input_dims, output_dims = batch_dims(gm, batch_symbol)
        tensors = [v for v in example_inputs if isinstance(v, torch.Tensor)]
        why = None
        if not tensors or any(v.device.type != "cuda" for v in tensors):
            devices = sorted({v.device.type for v in tensors}) or ["none"]
            why = f"its inputs are on {', '.join(devices)}, not CUDA"
        elif mutated := mutated_inputs(gm):
            why = f"it writes to its inputs in place ({', '.join(mutated[:3])})"
        return BatchLayout(
            position=position,
            input_dims=tuple(input_dims),
            output_dims=tuple(output_dims),
            static_inputs=(
                self._static
                if self._static is not None
                else active().module.static_input_indices(gm, example_inputs)
            ),
            not_capturable=why,
        )

    def _graph_variants(
        self,
        index: int,
        variants: dict[RuntimeShape, Callable[..., Any]],
        layout: BatchLayout,
        example_inputs: Sequence[Any],
    ) -> dict[RuntimeShape, Callable[..., Any]]:
        """The served sizes' variants wrapped for CUDA-graph replay, where asked for and
        possible (a static graph whose batch is a served size counts as that size)."""
        wanted, statics = self.options.cudagraphs, layout.static_inputs
        if wanted is False:
            return variants
        served: list[RuntimeShape] = [s for s in variants if isinstance(s, int)]
        if layout.position is None and variants:
            batch = static_batch(example_inputs, self.options.batch_dim, statics)
            served = [None] if batch in self.compile_sizes else []
        if not served:
            return variants
        if layout.not_capturable is not None:
            if wanted is True and "not CUDA" in layout.not_capturable:
                raise ConfigError(
                    f"cudagraphs=True, but graph {index} cannot be captured: "
                    f"{layout.not_capturable}. CUDA graphs need a model on CUDA; pass "
                    "cudagraphs=None (on where possible) or False"
                )
            if "not CUDA" not in layout.not_capturable:
                log.warning(
                    "torchshim: graph %d runs without CUDA graphs: %s", index, layout.not_capturable
                )
                for shape in served:
                    self.serving.uncaptured[self._label(index, shape)] = layout.not_capturable
            return variants
        if self._pool is None:
            self._pool = active().module.cuda_graph_pool()
        graphed = dict(variants)
        for shape in served:
            size = shape if isinstance(shape, int) else static_batch(example_inputs, 0, statics)
            variant = GraphedVariant(
                self._label(index, shape),
                variants[shape],
                layout,
                self._pool,
                self.serving,
                size=size,
                spec=input_spec(example_inputs, layout, size),
            )
            graphed[shape] = variant
            self._graphed.append(variant)
        return graphed

    @staticmethod
    def _label(index: int, shape: RuntimeShape) -> str:
        return f"graph {index} {shape_label(shape) if shape is not None else 'static'}"

    def capture_graphs(self, example_args: Sequence[Any] | None = None) -> float:
        """Capture every served size's CUDA graph not captured yet, largest first (they share
        one memory pool), with zero-filled inputs of its size; the seconds it took. Runs by
        itself at a variant's first call otherwise."""
        import torch

        started = time.perf_counter()
        pending = [v for v in self._graphed if v._graph is None and not v._failed]
        for variant in sorted(pending, key=lambda v: -(v.size or 0)):
            args = variant.synthetic_args()
            if args is not None:
                with torch.no_grad():
                    variant.capture(args)
        return time.perf_counter() - started

    def _one(
        self,
        adaptor: CompilerInterface,
        gm: Any,
        example_inputs: Sequence[Any],
        index: int,
        key: str,
        shape: RuntimeShape,
        factors: dict[str, str],
    ) -> Callable[..., Any] | None:
        label = shape_label(shape)
        store = adaptor.store
        entry = adaptor.entry_id(key, shape)
        lock = (
            store.lock(entry, self.lock_timeout)
            if store is not None and store.writable
            else contextlib.nullcontext()
        )
        try:
            with lock:
                return self._load_or_compile(
                    adaptor, gm, example_inputs, index, key, shape, factors
                )
        except CacheLockTimeout as exc:
            # availability first: compile here, without the cache, rather than fail
            log.warning(
                "torchshim: graph %d (%s): %s; compiling it without the cache", index, label, exc
            )
            with _uncached(adaptor):
                fn = self._compile_one(adaptor, gm, example_inputs, index, key, shape)
            self.stats.uncached += 1
            return fn

    def _load_or_compile(
        self,
        adaptor: CompilerInterface,
        gm: Any,
        example_inputs: Sequence[Any],
        index: int,
        key: str,
        shape: RuntimeShape,
        factors: dict[str, str],
    ) -> Callable[..., Any] | None:
        label = shape_label(shape)
        store = adaptor.store
        if shape is not None and self._marked_general(store, key, shape):
            self.stats.general_fallbacks += 1
            return None
        handle = adaptor.cached_handle(key, shape) if adaptor.stores_artifacts else None
        if handle is not None:
            try:
                loading = time.perf_counter()
                direct_before = getattr(adaptor, "direct_loads", 0)
                try:
                    fn = adaptor.load(handle, gm, example_inputs, index, shape)
                finally:
                    self.stats.load_seconds += time.perf_counter() - loading
            except LoadError as exc:
                log.warning(
                    "graph %d (%s): cached entry not used (%s); compiling", index, label, exc
                )
            else:
                self.stats.loaded += 1
                how = ""
                if getattr(adaptor, "direct_loads", 0) > direct_before:
                    self.stats.direct_loads += 1
                    how = " (direct)"
                self._event(f"graph {index} ({label}): loaded{how}")
                return fn
        elif adaptor.stores_artifacts:
            self._explain_miss(store, factors, shape, index, label)
        return self._compile_one(adaptor, gm, example_inputs, index, key, shape)

    def _compile_one(
        self,
        adaptor: CompilerInterface,
        gm: Any,
        example_inputs: Sequence[Any],
        index: int,
        key: str,
        shape: RuntimeShape,
    ) -> Callable[..., Any] | None:
        label = shape_label(shape)
        t0 = time.perf_counter()
        if not adaptor.stores_artifacts:
            fn, _ = adaptor.compile(gm, example_inputs, self.compiler_config, shape, key=key)
            self.stats.eager += 1
            self._event(f"graph {index} ({label}): runs as traced ({adaptor.name})")
            return fn
        self._event(f"graph {index} ({label}): compiling")
        fn, stored = adaptor.compile(gm, example_inputs, self.compiler_config, shape, key=key)
        self.stats.compile_seconds += time.perf_counter() - t0
        if fn is None:
            if shape is None:
                raise RuntimeError(
                    f"torchshim: graph {index} could not be compiled by {adaptor.name} (see "
                    "the warning above); use adaptor='eager' to run it uncompiled"
                )
            self._mark_general(adaptor.store, key, shape)
            self.stats.general_fallbacks += 1
            self._event(f"graph {index} ({label}): the general graph serves it")
            return None
        self.stats.compiled += 1
        self._event(
            f"graph {index} ({label}): compiled in {time.perf_counter() - t0:.1f} s"
            + ("" if stored is not None else " (not stored)")
        )
        return fn

    def _event(self, text: str) -> None:
        self.stats.events.append(text)
        log.info("torchshim: %s", text)

    # -- sizes that cannot be specialised ---------------------------------------------------------
    def _marker(self, key: str, shape: RuntimeShape) -> str:
        return hashlib.sha256(f"general-for|{key}|{shape}".encode()).hexdigest()[:32]

    def _marked_general(self, store: CacheStore | None, key: str, shape: RuntimeShape) -> bool:
        """Whether a verified (and, with a key, signed) marker says the general graph serves
        ``shape``; a marker that does not verify is a miss like any entry."""
        if store is None or not store.enabled:
            return False
        marker = self._marker(key, shape)
        if not store.exists(marker):
            return False
        manifest = store.read_manifest(marker, {}, f"{key}|{shape}|general")
        meta = (manifest or {}).get("meta", {})
        return isinstance(meta, dict) and meta.get("fallback") == _GENERAL

    def _mark_general(self, store: CacheStore | None, key: str, shape: RuntimeShape) -> None:
        if store is None or not store.enabled or not store.writable:
            return
        marker = self._marker(key, shape)
        with store.writer(marker, f"{key}|{shape}|general") as writer:
            writer.commit({"fallback": _GENERAL, "runtime_shape": shape})

    # -- why a miss ------------------------------------------------------------------------------
    def _explain_miss(
        self,
        store: CacheStore | None,
        factors: dict[str, str],
        shape: RuntimeShape,
        index: int,
        label: str,
    ) -> None:
        """One log line naming the factor that differs from the nearest stored entry of the same
        graph (another torch build, config, rank...), when there is one."""
        if store is None or not store.enabled:
            return
        best: tuple[int, dict[str, Any]] | None = None
        for entry in store.entries():
            stored = entry.meta.get("backend_factors")
            try:
                stored_shape = check_runtime_shape(entry.meta.get("runtime_shape"))
            except ValueError:
                continue
            if not isinstance(stored, dict) or stored_shape != shape:
                continue
            if stored.get("graph") != factors["graph"]:
                continue
            differing = sum(stored.get(k) != v for k, v in factors.items())
            if best is None or differing < best[0]:
                best = (differing, stored)
        if best is None:
            return
        names = [k for k, v in factors.items() if best[1].get(k) != v]
        log.warning(
            "torchshim: graph %d (%s) is cached for another %s; compiling it afresh",
            index,
            label,
            ", ".join(names) or "key",
        )


def backend(
    options: str | os.PathLike[str] | BackendOptions | None = None, /, **settings: Any
) -> Backend:
    """A backend for ``torch.compile(model, backend=...)``: ``backend(cache_dir, **settings)`` or
    ``backend(BackendOptions(...))``; the settings are those of
    :class:`~torchshim.options.BackendOptions`."""
    return Backend(options, **settings)


def _on_cuda(example_inputs: Sequence[Any]) -> bool:
    import torch

    return any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in example_inputs)


@contextlib.contextmanager
def _uncached(adaptor: CompilerInterface) -> Iterator[None]:
    """Compile without storing (the entry's lock could not be had)."""
    saved = adaptor.disable_cache
    adaptor.disable_cache = True
    try:
        yield
    finally:
        adaptor.disable_cache = saved


_registered: Backend | None = None
_registered_lock = threading.Lock()


def registered_backend(gm: Any, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    """``torch.compile(model, backend="torchshim")``: configured by the ``TORCHSHIM_*``
    variables (:meth:`BackendOptions.from_environment`); one backend per process."""
    global _registered
    with _registered_lock:
        if _registered is None:
            _registered = Backend(BackendOptions.from_environment())
        chosen = _registered
    return chosen(gm, example_inputs)


def compile(
    model: Callable[..., Any],
    options: str | os.PathLike[str] | BackendOptions | None = None,
    /,
    **settings: Any,
) -> Callable[..., Any]:
    """``torch.compile`` with torchshim's backend, traced once with a symbolic batch dimension
    under the shim's capture configuration (so compiling and loading processes get one graph);
    on torch 2.10+ the trace is saved and a warm process runs it without tracing
    (:mod:`torchshim.warm`). ``compile(model, cache_dir, **settings)`` or
    ``compile(model, BackendOptions(...))``.

    ``batch_dim``: the dimension of every tensor argument that is the batch (marked dynamic on the
    first call); ``None`` leaves dynamism to Dynamo. An error of torchshim's own (a bad setting,
    an unusable cache) is raised as itself, not inside Dynamo's ``BackendCompilerFailed``.
    """
    from torchshim.warm import compile_model

    return compile_model(model, options, **settings)
