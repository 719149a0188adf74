"""``torchshim.compile``: a model traced once, its graphs compiled or loaded at the first call;
where the torch series can save Dynamo's output (capability ``supports_dynamo_program``, torch
2.10+), a warm process does not trace at all: it loads the saved program and the stored graphs.

What Dynamo's guards would protect in a traced process is protected another way, and fails safe:

* the program's entry is keyed by the model's class and the file that defines it, its
  parameters' and buffers' names, shapes, dtypes and devices, the call's input specification (the
  batch dimension left free), the global state Dynamo guards on (grad mode, default dtype,
  deterministic algorithms), the compiler (torch, Triton and Python builds, Inductor's config),
  the compiler config and torchshim's settings: anything different is another key, a miss with one
  log line naming the factor;
* every module whose code the trace read is hashed when the program is saved and checked when it
  is loaded (an edit anywhere in the model's files is a miss); this stands in for Dynamo's guards
  on objects' identity (a decorator's closure, a function or module the model reads), which cannot
  leave a process and are left out of the saved guards;
* the program's own saved guards (tensor shapes, dtypes, strides, constants read from the model)
  are checked at every call; a call they refuse, or one made under other global state, runs
  through an ordinary ``torch.compile`` trace instead.

Where the series cannot save Dynamo's output, or the model cannot be saved (a graph break, a class
defined inside a function), the first call traces as ``torch.compile`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchshim._stable import stable_json
from torchshim.errors import own_error
from torchshim.options import BackendOptions
from torchshim.shims import active, capabilities
from torchshim.warm_key import global_state, module_digest, program_factors, traced_target

if TYPE_CHECKING:
    from torchshim.cache import CacheStore
    from torchshim.compile_backend import Backend

__all__ = ["CompiledModel", "compile_model", "program_factors"]

log = logging.getLogger(__name__)

_PAYLOAD_MAGIC = b"torchshim-graph-1\n"


# -- the backend's side ----------------------------------------------------------------------------
def program_store(chosen: Backend) -> CacheStore | None:
    """The cache store saved traces live in (the backend's rank, with its remote tier), or
    ``None`` when there is none."""
    from torchshim.adaptors import make_adaptor
    from torchshim.cache import TieredStore, remote_from_environment

    if not make_adaptor(chosen.adaptor_name).stores_artifacts:
        return None
    store = TieredStore(chosen.root, remote=remote_from_environment(chosen.options.remote))
    return store if store.enabled else None


def restore_graph(
    chosen: Backend, gm: Any, example_inputs: Sequence[Any], static: frozenset[int], digest: str
) -> Callable[..., Any]:
    """Build a graph of a loaded saved trace as if Dynamo had just traced it."""
    with chosen._lock:
        chosen._static = static
        try:
            fn = chosen._compile_graph(gm, example_inputs)
        finally:
            chosen._static = None
        rebuilt = chosen.last_digest
    if digest != rebuilt:
        log.warning(
            "torchshim: a graph of the saved trace has another key than when it was saved "
            "(it was compiled or loaded afresh)"
        )
    return fn


# -- graphs inside a saved program -----------------------------------------------------------------
def saving_payload(
    gm: Any, example_inputs: Sequence[Any], static: Sequence[int], digest: str
) -> bytes:
    """What a saved program keeps of one graph: its key and static inputs, and the graph."""
    header = json.dumps({"digest": digest, "static": sorted(static)}).encode()
    body: bytes = active().module.graph_to_bytes(gm)
    return _PAYLOAD_MAGIC + header + b"\n" + body


class RestoredGraph:
    """A graph of a loaded program: built (its variants loaded from the cache) at its first call,
    with that call's tensors as example inputs, as Dynamo would hand them to the backend."""

    def __init__(self, chosen: Backend, payload: bytes) -> None:
        if not payload.startswith(_PAYLOAD_MAGIC):
            raise ValueError("not a torchshim graph payload")
        header, _, body = payload[len(_PAYLOAD_MAGIC) :].partition(b"\n")
        meta = json.loads(header)
        self.digest = str(meta["digest"])
        self.static = frozenset(int(i) for i in meta["static"])
        self.graph = active().module.graph_from_bytes(body)
        self.examples = [
            n.meta.get("example_value") for n in self.graph.graph.find_nodes(op="placeholder")
        ]
        self.backend = chosen
        self.fn: Callable[..., Any] | None = None
        self._lock = threading.Lock()

    def build(self, args: Sequence[Any]) -> Callable[..., Any]:
        import torch

        with self._lock:
            if self.fn is None:
                inputs = [
                    fake if isinstance(fake, torch.SymInt) else real
                    for fake, real in zip(self.examples, args, strict=True)
                ]
                self.fn = restore_graph(self.backend, self.graph, inputs, self.static, self.digest)
            return self.fn

    def __call__(self, *args: Any) -> Any:
        fn = self.fn if self.fn is not None else self.build(args)
        return fn(*args)


# -- the program entry -----------------------------------------------------------------------------
@dataclass
class Program:
    """One saved trace: the symbolic batch (``size`` None) or one batch size Dynamo specialises."""

    size: int | None
    program: Any


def _entry_id(factors: dict[str, str]) -> str:
    return hashlib.sha256(f"program|{stable_json(factors)}".encode()).hexdigest()[:32]


class ProgramCache:
    """Saved programs in the backend's cache store (one entry per program key)."""

    def __init__(self, store: CacheStore, factors: dict[str, str]) -> None:
        self.store = store
        self.factors = factors
        self.entry = _entry_id(factors)
        self.key = stable_json(factors)
        #: why this model's trace cannot be saved, as an earlier process found (it traces)
        self.refused: str | None = None

    def load(
        self, f_globals: dict[str, Any], restore: Callable[[bytes], Any]
    ) -> list[Program] | None:
        store = self.store
        if not store.enabled:
            return None
        manifest = store.read_manifest(self.entry, {}, self.key)
        if manifest is None:
            self._explain_miss()
            return None
        meta = manifest.get("meta", {})
        if isinstance(meta, dict) and isinstance(meta.get("unsaveable"), str):
            self.refused = str(meta["unsaveable"])
            return None
        modules = meta.get("modules") if isinstance(meta, dict) else None
        listed = meta.get("programs") if isinstance(meta, dict) else None
        if not isinstance(modules, dict) or not isinstance(listed, list):
            return None
        for name, digest in sorted(modules.items()):
            if module_digest(str(name)) != digest:
                log.warning(
                    "torchshim: the saved trace of %s is not used: the code of module %s changed "
                    "since it was saved; tracing again",
                    self.factors["model"],
                    name,
                )
                return None
        copy = store.checkout(self.entry, {}, self.key)
        if copy is None:
            return None
        programs = []
        shim = active().module
        try:
            for item in listed:
                data = (copy / str(item["file"])).read_bytes()
                size = item.get("size")
                programs.append(Program(size, shim.load_program(data, f_globals, restore)))
        except Exception as exc:  # another torch build's bytes, a missing file: a miss
            log.warning(
                "torchshim: the saved trace of %s could not be loaded (%s: %s); tracing again",
                self.factors["model"],
                type(exc).__name__,
                exc,
            )
            return None
        return programs

    def save(self, programs: Sequence[Program]) -> None:
        store = self.store
        if not store.enabled or not store.writable:
            return
        shim = active().module
        modules: set[str] = set()
        listed = []
        try:
            with store.writer(self.entry, self.key) as writer:
                for index, item in enumerate(programs):
                    name = f"program-{index}.bin"
                    (writer.path / name).write_bytes(shim.save_program(item.program))
                    modules.update(shim.program_modules(item.program))
                    listed.append({"file": name, "size": item.size})
                writer.commit(
                    {
                        "kind": "dynamo_program",
                        "program_factors": self.factors,
                        "programs": listed,
                        "modules": {m: module_digest(m) for m in sorted(modules)},
                    }
                )
        except Exception as exc:  # a program that cannot be saved still runs
            log.warning(
                "torchshim: the trace of %s was not saved (%s: %s); the next process traces it "
                "again",
                self.factors["model"],
                type(exc).__name__,
                exc,
            )

    def refuse(self, why: str) -> None:
        """Record that this model's trace cannot be saved, so later processes trace at once
        (instead of tracing to save, failing, and tracing again)."""
        store = self.store
        if not store.enabled or not store.writable:
            return
        try:
            with store.writer(self.entry, self.key) as writer:
                writer.commit(
                    {"kind": "dynamo_program", "program_factors": self.factors, "unsaveable": why}
                )
        except Exception as exc:  # nothing lost: the next process finds out again
            log.debug("torchshim: could not record %s: %s", why, exc)

    def _explain_miss(self) -> None:
        """One log line naming the factor that differs from the nearest saved program of the
        same model, when there is one."""
        best: tuple[int, dict[str, Any]] | None = None
        for entry in self.store.entries():
            stored = entry.meta.get("program_factors")
            if not isinstance(stored, dict) or stored.get("model") != self.factors["model"]:
                continue
            differing = sum(stored.get(k) != v for k, v in self.factors.items())
            if best is None or differing < best[0]:
                best = (differing, stored)
        if best is not None:
            names = [k for k, v in self.factors.items() if best[1].get(k) != v]
            log.warning(
                "torchshim: the saved trace of %s is for another %s; tracing again",
                self.factors["model"],
                ", ".join(names) or "key",
            )


# -- torchshim.compile -----------------------------------------------------------------------------
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


class CompiledModel:
    """What ``torchshim.compile`` returns."""

    def __init__(self, model: Callable[..., Any], chosen: Backend) -> None:
        self.model = model
        self.backend = chosen
        self.batch_dim = chosen.options.batch_dim
        self._traced: Any = None
        self.programs: list[Program] | None = None
        #: the saved programs by the batch size they serve (``None``: the symbolic batch)
        self._by_size: dict[int | None, Any] = {}
        #: what a saved trace traces, and what comes before the call's arguments (the model)
        self._fn, _name, self._lead = traced_target(model)
        self.state: dict[str, Any] | None = None
        self._first = True
        self._lock = threading.Lock()
        self._traced_lock = threading.Lock()
        self._refused = False

    @property
    def traced(self) -> Any:
        """``torch.compile(model, backend=...)``, made at its first use: a warm process that runs
        the saved trace never needs it, and making it imports Dynamo's debugging backends (about
        0.4 s here)."""
        traced = self._traced
        if traced is None:  # the lock only until it exists: refused calls go through here
            with self._traced_lock:
                if self._traced is None:
                    import torch

                    self._traced = torch.compile(self.model, backend=self.backend)
                traced = self._traced
        return traced

    @property
    def __wrapped__(self) -> Any:
        return self.traced

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._first:
                with self._lock:
                    if self._first:
                        return self._first_call(args, kwargs)
            return self._call(args, kwargs)
        except Exception as exc:
            own = own_error(exc)
            if own is None or own is exc:
                raise
            raise own from exc

    # -- every call ----------------------------------------------------------------------------
    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.programs is None:
            return self.traced(*args, **kwargs)
        shim = active().module
        full = (*self._lead, *args)
        if global_state() == self.state:
            # the program of this batch size, else the symbolic batch's
            batch = self._batch(args, kwargs)
            sized = self._by_size.get(batch) if batch is not None else None
            candidates = (sized, self._by_size.get(None))
            for program in candidates:
                if program is not None and shim.program_guard(program, full, kwargs):
                    return shim.program_call(program, full, kwargs)
            why = shim.program_why_not(self.programs[-1].program, full, kwargs)
        else:
            why = "grad mode, the default dtype or deterministic algorithms differ"
        if not self._refused:
            self._refused = True
            log.warning(
                "torchshim: a call the saved trace does not cover (%s) is traced by Dynamo", why
            )
        return self.traced(*args, **kwargs)

    def _batch(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int | None:
        import torch

        dim = self.batch_dim
        if dim is None:
            return None
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dim() > dim:
                return int(value.shape[dim])
        return None

    # -- the first call ----------------------------------------------------------------------------
    def _first_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        chosen = self.backend
        out = None
        if "supports_dynamo_program" in capabilities() and chosen.options.save_trace:
            out = self._from_program(args, kwargs)
        if self.programs is None:
            out = self._trace(args, kwargs)
        chosen.capture_graphs()
        stats = chosen.stats
        stats.first_call_seconds = time.perf_counter() - started
        capture = stats.serving.capture_seconds + stats.serving.first_run_seconds
        stats.dynamo_seconds = max(0.0, stats.first_call_seconds - stats.seconds - capture)
        self._first = False
        return out

    def _marked(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        import torch

        dim = -1 if self.batch_dim is None else self.batch_dim
        batched = [
            value
            for value in (*args, *kwargs.values())
            if isinstance(value, torch.Tensor) and dim >= 0 and value.dim() > dim
        ]
        shim = active().module
        for value in batched:
            shim.mark_dynamic(value, dim)
        return batched

    def _small_sizes(self) -> list[int]:
        return [s for s in self.backend.compile_sizes if s < 2]

    def _trace(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """An ordinary Dynamo trace (and, for sizes 0 and 1, which Dynamo gives a graph of their
        own, a trace of the inputs cut to that size, so no first call waits for it)."""
        shim = active().module
        batched = self._marked(args, kwargs)
        dim = self.batch_dim or 0
        try:
            with shim.capture_config():
                out = self.traced(*args, **kwargs)
                if batched:
                    for size in self._small_sizes():
                        self.traced(*_cut(args, dim, size), **_cut(kwargs, dim, size))
        finally:
            self.backend._spare = {}
        return out

    def _from_program(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Load the saved program, or trace it so that it can be saved; ``None`` (and
        ``self.programs`` unset) when neither works, so the caller traces."""
        chosen = self.backend
        store = program_store(chosen)
        if store is None:
            return None
        fn, lead = self._fn, self._lead
        cache = ProgramCache(store, program_factors(chosen, self.model, args, kwargs))
        f_globals = getattr(fn, "__globals__", {})
        loading = time.perf_counter()
        programs = cache.load(f_globals, lambda payload: RestoredGraph(chosen, payload))
        chosen.stats.program_seconds += time.perf_counter() - loading
        if cache.refused is not None:
            chosen._event(f"traced: the trace cannot be saved ({cache.refused})")
            return None
        if programs is None:
            programs = self._capture(fn, lead, args, kwargs, cache)
            if programs is None:
                return None
            cache.save(programs)
        else:
            chosen.stats.program_loaded = True
            chosen._event(f"saved trace loaded ({len(programs)} program(s)): no Dynamo trace")
        self.programs = programs
        self._by_size = {item.size: item.program for item in programs}
        self.state = global_state()
        out = self._call(args, kwargs)
        dim = self.batch_dim or 0
        if self._batch(args, kwargs) is not None:
            for size in self._small_sizes():
                self._call(_cut(args, dim, size), _cut(kwargs, dim, size))
        return out

    def _capture(
        self,
        fn: Callable[..., Any],
        lead: tuple[Any, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cache: ProgramCache,
    ) -> list[Program] | None:
        chosen = self.backend
        shim = active().module
        dim = self.batch_dim or 0
        programs = []
        graphs = chosen.stats.graphs
        built: dict[str, Callable[..., Any]] = {}

        def on_graph(gm: Any, example_inputs: Sequence[Any], fn: Callable[..., Any]) -> Any:
            # the graph goes into the saved program as its key and the graph itself, to be
            # loaded from the cache by a warm process (the backend has just compiled or loaded
            # it: no spare graphs exist while a trace is saved)
            digest = chosen.last_digest
            built[digest] = fn
            static = sorted(shim.static_input_indices(gm, example_inputs))
            return shim.saved_graph(fn, saving_payload(gm, example_inputs, static, digest))

        chosen._on_graph = on_graph
        try:
            with shim.capture_config():
                batched = self._marked(args, kwargs)
                size = self._batch(args, kwargs) if not batched else None
                programs.append(
                    Program(size, shim.capture_program(fn, (*lead, *args), kwargs, chosen))
                )
                if batched:
                    for small in self._small_sizes():
                        cut_args, cut_kwargs = _cut(args, dim, small), _cut(kwargs, dim, small)
                        traced = shim.capture_program(fn, (*lead, *cut_args), cut_kwargs, chosen)
                        programs.append(Program(small, traced))
        except Exception as exc:
            own = own_error(exc)
            if own is not None:
                raise own from exc
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning(
                "torchshim: %s cannot be traced whole and saved (%s); tracing it as "
                "torch.compile does, on every start",
                getattr(fn, "__qualname__", fn),
                why,
            )
            # the graphs built on the way go to the trace that follows (no second load)
            chosen.stats.graphs = graphs
            chosen._spare = built
            cache.refuse(why)
            return None
        finally:
            chosen._on_graph = None
        chosen.stats.traced += len(programs)
        return programs


def compile_model(
    model: Callable[..., Any],
    options: str | os.PathLike[str] | BackendOptions | None = None,
    /,
    **settings: Any,
) -> Callable[..., Any]:
    """See :func:`torchshim.compile`."""
    from torchshim.compile_backend import Backend

    chosen = Backend(options, **settings)
    compiled = CompiledModel(model, chosen)
    return compiled
