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
from torchshim.cache import CacheStore, default_cache_dir
from torchshim.errors import CacheLockTimeout, ConfigError, LoadError, TorchShimError
from torchshim.options import BackendOptions, options_from
from torchshim.shims import active

__all__ = [
    "BACKEND_FORMAT",
    "Backend",
    "BackendStats",
    "backend",
    "compile",
    "make_dispatcher",
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
    #: graphs an adaptor that compiles nothing (eager) runs as traced
    eager: int = 0
    #: compiles that could not use the cache (another process held the lock too long)
    uncached: int = 0
    general_fallbacks: int = 0
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "graphs": self.graphs,
            "compiled": self.compiled,
            "loaded": self.loaded,
            "eager": self.eager,
            "uncached": self.uncached,
            "general_fallbacks": self.general_fallbacks,
            "seconds": round(self.seconds, 3),
        }


def make_dispatcher(
    variants: dict[int | None, Callable[..., Any]], position: tuple[int, int | None] | None
) -> Callable[..., Any]:
    """A callable that runs the artifact of the call's batch size, or the general one.

    ``position`` is where the batch size is read: ``(input, None)`` for an int input,
    ``(input, dim)`` for a tensor dimension. One dict look-up per call.
    """
    general = variants[None]
    sized = {size: fn for size, fn in variants.items() if size is not None}
    if position is None or not sized:
        return general
    index, dim = position
    get = sized.get
    if dim is None:

        def dispatch_int(*args: Any) -> Any:
            return get(args[index], general)(*args)

        return dispatch_int

    def dispatch_dim(*args: Any) -> Any:
        return get(args[index].shape[dim], general)(*args)

    return dispatch_dim


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
        self.compile_sizes: tuple[int, ...] = self.options.compile_sizes
        self.adaptor_name = self.options.adaptor
        self.compiler_config = dict(self.options.compiler_config)
        self.rank = self.options.rank
        base = self.options.cache_dir or default_cache_dir()
        self.root = base.absolute() / f"rank_{self.rank if self.rank is not None else 0}"
        self.lock_timeout = self.options.effective_lock_timeout()
        self.stats = BackendStats()
        self._lock = threading.Lock()
        # fail early, before Dynamo traces anything: unknown adaptor, unsupported torch, a
        # compiler config Inductor would reject
        adaptor = make_adaptor(self.adaptor_name)
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
            return self._compile_graph(gm, example_inputs)

    @contextlib.contextmanager
    def _adaptor(self) -> Iterator[CompilerInterface]:
        adaptor = make_adaptor(self.adaptor_name)
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
            key = self._key(factors)
            adaptor.extra_meta = {"backend_factors": factors, "graph_index": index}
            position = graph_inputs(gm, example_inputs).batch_position
            # A graph with a static batch serves one size: nothing to specialise. Dynamo
            # specialises batch sizes 0 and 1 (a graph of their own), so a symbolic graph never
            # sees them.
            sizes = [s for s in self.compile_sizes if s >= 2] if position is not None else []
            variants: dict[int | None, Callable[..., Any]] = {}
            for shape in (None, *sizes):
                fn = self._one(adaptor, gm, example_inputs, index, key, shape, factors)
                if fn is not None:
                    variants[shape] = fn
        self.stats.graphs += 1
        self.stats.seconds += time.perf_counter() - started
        return make_dispatcher(variants, position)

    def _one(
        self,
        adaptor: CompilerInterface,
        gm: Any,
        example_inputs: Sequence[Any],
        index: int,
        key: str,
        shape: int | None,
        factors: dict[str, str],
    ) -> Callable[..., Any] | None:
        label = "general" if shape is None else f"size {shape}"
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
        shape: int | None,
        factors: dict[str, str],
    ) -> Callable[..., Any] | None:
        label = "general" if shape is None else f"size {shape}"
        store = adaptor.store
        if shape is not None and self._marked_general(store, key, shape):
            self.stats.general_fallbacks += 1
            return None
        handle = adaptor.cached_handle(key, shape) if adaptor.stores_artifacts else None
        if handle is not None:
            try:
                fn = adaptor.load(handle, gm, example_inputs, index, shape)
            except LoadError as exc:
                log.warning(
                    "graph %d (%s): cached entry not used (%s); compiling", index, label, exc
                )
            else:
                self.stats.loaded += 1
                self._event(f"graph {index} ({label}): loaded")
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
        shape: int | None,
    ) -> Callable[..., Any] | None:
        label = "general" if shape is None else f"size {shape}"
        t0 = time.perf_counter()
        if not adaptor.stores_artifacts:
            fn, _ = adaptor.compile(gm, example_inputs, self.compiler_config, shape, key=key)
            self.stats.eager += 1
            self._event(f"graph {index} ({label}): runs as traced ({adaptor.name})")
            return fn
        self._event(f"graph {index} ({label}): compiling")
        fn, stored = adaptor.compile(gm, example_inputs, self.compiler_config, shape, key=key)
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
    def _marker(self, key: str, shape: int) -> str:
        return hashlib.sha256(f"general-for|{key}|{shape}".encode()).hexdigest()[:32]

    def _marked_general(self, store: CacheStore | None, key: str, shape: int) -> bool:
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

    def _mark_general(self, store: CacheStore | None, key: str, shape: int) -> None:
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
        shape: int | None,
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
            if not isinstance(stored, dict) or entry.meta.get("runtime_shape") != shape:
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


def _own_error(exc: BaseException) -> TorchShimError | None:
    """torchshim's own error inside the wrapper Dynamo puts around a backend's exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TorchShimError):
            return current
        seen.add(id(current))
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return None


def _cut(values: Any, dim: int, size: int) -> Any:
    """Tensors in ``values`` (a tuple or dict) narrowed to ``size`` along ``dim``."""
    import torch

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > dim and value.shape[dim] >= size:
            return value.narrow(dim, 0, size).clone()  # a fresh tensor, as callers pass
        return value

    if isinstance(values, dict):
        return {k: cut(v) for k, v in values.items()}
    return tuple(cut(v) for v in values)


def compile(
    model: Callable[..., Any],
    options: str | os.PathLike[str] | BackendOptions | None = None,
    /,
    **settings: Any,
) -> Callable[..., Any]:
    """``torch.compile`` with torchshim's backend, traced once with a symbolic batch dimension
    under the shim's capture configuration (so compiling and loading processes get one graph).
    ``compile(model, cache_dir, **settings)`` or ``compile(model, BackendOptions(...))``.

    ``batch_dim``: the dimension of every tensor argument that is the batch (marked dynamic on the
    first call); ``None`` leaves dynamism to Dynamo. An error of torchshim's own (a bad setting,
    an unusable cache) is raised as itself, not inside Dynamo's ``BackendCompilerFailed``.
    """
    import torch

    chosen = Backend(options, **settings)
    batch_dim = chosen.options.batch_dim
    compiled = torch.compile(model, backend=chosen)
    state = {"first": True}

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            own = _own_error(exc)
            if own is None or own is exc:
                raise
            raise own from exc

    def call(*args: Any, **kwargs: Any) -> Any:
        if not state["first"]:
            return compiled(*args, **kwargs)
        shim = active().module
        dim = -1 if batch_dim is None else batch_dim
        batched = [
            value
            for value in (*args, *kwargs.values())
            if isinstance(value, torch.Tensor) and dim >= 0 and value.dim() > dim
        ]
        for value in batched:
            shim.mark_dynamic(value, dim)
        with shim.capture_config():
            out = compiled(*args, **kwargs)
            if batched:
                # Dynamo gives batch sizes 0 and 1 a graph of their own: trace (and compile or
                # load) it now, with the inputs cut to that size, so no first call waits for it
                for size in (s for s in chosen.compile_sizes if s < 2):
                    compiled(*_cut(args, dim, size), **_cut(kwargs, dim, size))
        state["first"] = False
        return out

    run.__wrapped__ = compiled  # type: ignore[attr-defined]
    run.backend = chosen  # type: ignore[attr-defined]
    return run
