"""The adaptor contract (``CompilerInterface``), typed handles and the shared cache environment."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from torchshim._patching import patch_environ
from torchshim.cache import CacheStore, default_cache_dir
from torchshim.errors import (
    AdaptorConfigError,
    ArtifactMissingError,
    ArtifactUnreadableError,
    CacheDirError,
    ForeignHandleError,
    HandleFormatError,
    TorchShimError,
    UnsupportedGraphError,
)
from torchshim.shims import GraphInputs, IsolatedCompile, active
from torchshim.shims._common import stable_json

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CompiledCallable",
    "CompilerInterface",
    "EagerHandle",
    "GraphInputs",
    "Handle",
    "InductorHandle",
    "StandaloneHandle",
    "StoredCompiler",
    "graph_digest",
    "graph_inputs",
    "handle_from_json",
    "parameter_constants",
]

log = logging.getLogger(__name__)

#: Bumped whenever the on-disk layout or the handle schema changes; part of every compiler hash.
CACHE_FORMAT_VERSION = 2

CompiledCallable = Callable[..., Any]
H = TypeVar("H", bound="Handle")

INDUCTOR_SUBDIR = "inductor"
TRITON_SUBDIR = "triton"


@dataclass(frozen=True)
class Handle:
    """What ``load`` needs to find a compiled artifact again, in a fresh process or on another
    machine. Holds no absolute path: ``path`` fields are relative to the cache base directory.
    ``guards`` (compiling handles) are the conditions on the inputs' symbolic sizes Inductor
    assumed while compiling; ``load`` has Dynamo guard on them, as it would have after a compile.
    """

    adaptor: str
    format_version: int
    compiler_hash: str
    runtime_shape: int | None

    kind: ClassVar[str] = "base"

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Handle:
        return handle_from_json(text)


@dataclass(frozen=True)
class EagerHandle(Handle):
    kind: ClassVar[str] = "eager"


@dataclass(frozen=True)
class InductorHandle(Handle):
    """A cache-store entry holding Inductor's FX-graph-cache entry and everything it loads; the
    FX-graph-cache key; the generated module inside the entry (for humans). ``key=None``: the
    graph has no operation, so Inductor compiled nothing and it runs as is."""

    entry: str
    key: str | None
    module_path: str | None = None
    guards: tuple[str, ...] = ()

    kind: ClassVar[str] = "inductor"


@dataclass(frozen=True)
class StandaloneHandle(Handle):
    """A cache-store entry holding a saved ``CompiledArtifact`` (``path`` inside the entry, in
    ``artifact_format``) and the kernels it loads. ``artifact_format="none"``: the graph has no
    operation, nothing was compiled, and it runs as is."""

    entry: str
    path: str
    artifact_format: str
    guards: tuple[str, ...] = ()

    kind: ClassVar[str] = "inductor_standalone"


_HANDLE_TYPES: dict[str, type[Handle]] = {
    t.kind: t for t in (EagerHandle, InductorHandle, StandaloneHandle)
}


def handle_from_json(text: str | bytes) -> Handle:
    """Parse a handle written by :meth:`Handle.to_json` (raises :class:`HandleFormatError`)."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise HandleFormatError(f"a handle must be a JSON object, got {text!r:.80}") from exc
    if not isinstance(data, dict):
        raise HandleFormatError(f"a handle must be a JSON object, got {type(data).__name__}")
    kind = data.pop("kind", None)
    cls = _HANDLE_TYPES.get(str(kind))
    if cls is None:
        raise HandleFormatError(
            f"unknown handle kind {kind!r}; known kinds: {sorted(_HANDLE_TYPES)}. The handle was "
            "written by another program or a newer torchshim; recompile."
        )
    names = {f.name for f in fields(cls)}
    guards = data.get("guards")
    if guards is not None:
        if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
            raise HandleFormatError(f"{kind} handle: guards must be a list of strings; recompile")
        data["guards"] = tuple(guards)
    unknown = set(data) - names
    if unknown:
        raise HandleFormatError(f"{kind} handle has unknown fields {sorted(unknown)}; recompile")
    try:
        handle = cls(**data)
    except TypeError as exc:
        raise HandleFormatError(f"{kind} handle is incomplete: {exc}; recompile") from exc
    for field_name in ("path", "module_path"):
        value = getattr(handle, field_name, None)
        if isinstance(value, str) and (os.path.isabs(value) or ".." in Path(value).parts):
            raise HandleFormatError(
                f"{kind} handle holds a path outside its cache entry ({value!r}); handles "
                "hold paths relative to their entry only"
            )
    entry = getattr(handle, "entry", "")
    if entry is not None and not (
        isinstance(entry, str) and entry and all(c in "0123456789abcdef" for c in entry)
    ):
        raise HandleFormatError(f"{kind} handle names no valid cache entry ({entry!r}); recompile")
    return handle


def graph_digest(graph: Any, example_inputs: Sequence[Any]) -> str:
    """A key for a compile when the caller gives none: the graph's code with its input symbols
    renamed by position, and its inputs' dtypes, devices and static sizes (symbolic sizes as
    ``sym``), so every batch size of one trace, in any process, gets the same key."""
    nodes = [
        n for n in getattr(getattr(graph, "graph", None), "nodes", ()) if n.op == "placeholder"
    ]
    text = [active().module.canonical_code(graph, example_inputs)]
    for index, value in enumerate(example_inputs):
        meta = nodes[index].meta.get("example_value") if index < len(nodes) else None
        shown = meta if meta is not None and hasattr(meta, "shape") else value
        shape = getattr(shown, "shape", None)
        dims = [d if isinstance(d, int) else "sym" for d in shape] if shape is not None else None
        text.append(
            f"{type(value).__name__}:{getattr(shown, 'dtype', '')}:"
            f"{getattr(shown, 'device', '')}:{dims if dims is not None else type(shown).__name__}"
        )
    return hashlib.sha256("\n".join(text).encode()).hexdigest()[:32]


def graph_inputs(graph: Any, example_inputs: Sequence[Any]) -> GraphInputs:
    """The size symbols of a graph's inputs (Dynamo's, for a graph a backend receives), which one
    is the batch that ``runtime_shape`` specialises, and where its value is read at call time
    (``batch_position``), so a dispatcher can route each call to the artifact of its size."""
    return active().module.describe_graph_inputs(graph, example_inputs)


def parameter_constants(graph: Any) -> list[str]:
    """Parameters and buffers the graph reads as constants rather than as inputs: ``get_attr``
    nodes that target one, and ``call_module`` nodes whose sub-module owns some.

    Dynamo lifts parameters to graph inputs; ``torch.fx.symbolic_trace`` of an ``nn.Module`` keeps
    them inside the graph module, and Inductor's compiled artifacts then expect them as inputs.
    """
    if not hasattr(graph, "named_parameters"):
        return []
    named = {name for name, _ in graph.named_parameters()}
    named.update(name for name, _ in graph.named_buffers())
    found: list[str] = []
    for node in getattr(getattr(graph, "graph", None), "nodes", ()):
        target = str(node.target)
        if (node.op == "get_attr" and target in named) or (
            node.op == "call_module" and any(n.startswith(target + ".") for n in named)
        ):
            found.append(target)
    return found


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
        "(torch._dynamo.config.specialize_float=True), as torchshim's backend does, to trace "
        "once.",
        adaptor,
        ", ".join(symbols),
    )


_machine_store_lock = threading.Lock()
_machine_stores: dict[Path, CacheStore | None] = {}
#: probe answers known in this process, per (fingerprint, store roots)
_probe_memo: dict[tuple[str, tuple[Path, ...]], dict[str, bool]] = {}


def _machine_store() -> CacheStore | None:
    """The user's own torchshim cache directory, where machine facts (probe answers) are shared
    by every cache directory on the machine; ``None`` where it cannot be used."""
    root = default_cache_dir().expanduser().absolute()
    with _machine_store_lock:
        if root not in _machine_stores:
            try:
                _machine_stores[root] = CacheStore(root)
            except (CacheDirError, OSError) as exc:
                log.debug("no machine-wide probe record in %s: %s", root, exc)
                _machine_stores[root] = None
        return _machine_stores[root]


@contextlib.contextmanager
def machine_probes(store: CacheStore | None = None) -> Iterator[None]:
    """Answer Inductor's one-time machine probes in the block (the CPU vector-ISA check, which
    builds and loads test programs: 5-30 s in a fresh process) from where torchshim recorded
    them, ``store`` and the user's torchshim cache directory, and record the answers it had to
    find there. Keyed by torch build, C++ compiler and CPU."""
    stores = [s for s in (store, _machine_store()) if s is not None and s.enabled]
    if len(stores) == 2 and stores[0].root == stores[1].root:
        del stores[1]
    if not stores:
        yield
        return
    shim = active().module
    try:
        fingerprint = shim.cpu_probe_fingerprint()
    except Exception as exc:  # no C++ compiler, an unreadable /proc: Inductor probes as it would
        log.debug("CPU probe answers not recorded: %s: %s", type(exc).__name__, exc)
        yield
        return
    memo_key = (fingerprint, tuple(each.root for each in stores))
    known = _probe_memo.get(memo_key)
    if known is None:  # once per process and set of stores: compiles and loads are many
        records = [each.read_probes(fingerprint) for each in stores]
        known = {}
        for record in reversed(records):  # the given store's record wins
            known.update(record)
        for each, record in zip(stores, records, strict=True):
            if known and record != known:  # share what one store knows with the other
                each.write_probes(fingerprint, known)
        _probe_memo[memo_key] = known
    with shim.cpu_probe_results(known) as found:
        yield
    if found:
        known = _probe_memo[memo_key] = {**known, **found}
        for each in stores:
            each.write_probes(fingerprint, known)


def warm_up(store: CacheStore | None = None) -> None:
    """Pay Inductor's one-time start-up in this process now (the CPU vector-ISA probe), answered
    from torchshim's probe record where it has one; see :func:`machine_probes`."""
    with machine_probes(store):
        active().module.warm_up_cpu()


class _CacheEnvironment:
    """Points Inductor's and Triton's caches inside one base directory, process-wide, for as long
    as an adaptor holds it. Reference-counted; restored when the last holder closes."""

    _lock = threading.Lock()
    _base: Path | None = None
    _holders = 0
    _stack: contextlib.ExitStack | None = None

    @classmethod
    def acquire(cls, base: Path, kernels: Path) -> None:
        with cls._lock:
            if cls._holders and cls._base != base:
                raise AdaptorConfigError(
                    f"another adaptor holds the cache base {cls._base}; Inductor's cache location "
                    f"is process-wide, so {base} cannot be used at the same time. Close the other "
                    "adaptor first, or give both the same base directory (cache_dir + prefix)."
                )
            if cls._holders == 0:
                stack = contextlib.ExitStack()
                stack.enter_context(
                    patch_environ(
                        {
                            "TORCHINDUCTOR_CACHE_DIR": str(kernels / INDUCTOR_SUBDIR),
                            "TRITON_CACHE_DIR": str(kernels / TRITON_SUBDIR),
                        }
                    )
                )
                cls._stack, cls._base = stack, base
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            if cls._holders == 0:
                return
            cls._holders -= 1
            if cls._holders == 0 and cls._stack is not None:
                cls._stack.close()
                cls._stack, cls._base = None, None


class CompilerInterface(abc.ABC):
    """One compiler behind the contract engines call (names as in vLLM's compiler interface).

    ``initialize_cache`` adopts a directory; ``compute_hash`` returns the compiler's factors for
    the engine's cache key; ``compile`` returns ``(callable | None, handle | None)``; ``load``
    turns a handle back into a callable without compiling, or raises a :class:`LoadError` that
    the caller treats as a miss. Use as a context manager (or call :meth:`close`) to restore the
    process-wide state ``initialize_cache`` changed.
    """

    name: ClassVar[str] = "base"

    def __init__(self) -> None:
        self.cache_dir: Path | None = None
        self.base_cache_dir: Path | None = None
        self.prefix = ""
        self.disable_cache = False
        self.store: CacheStore | None = None
        #: recorded with every entry this adaptor stores (the backend's key factors, for explain)
        self.extra_meta: dict[str, Any] = {}
        self._scratch: Path | None = None
        self._holds_env = False
        self._hash: str | None = None

    # -- cache directory -----------------------------------------------------------------------
    def initialize_cache(
        self, cache_dir: str | os.PathLike[str], disable_cache: bool = False, prefix: str = ""
    ) -> None:
        """Adopt ``cache_dir``. With ``prefix`` (``cache_dir=/c/backbone, prefix="backbone"``) the
        base directory, the cache store every part of a model shares, is ``/c``; this part's
        entries are told apart by the prefix.

        The base directory is a :class:`~torchshim.cache.CacheStore`: created with mode 0700 when
        missing; not used (one warning, nothing cached) when another user owns it or group or
        others can write it, unless ``TORCHSHIM_CACHE_SHARED=1``; read-only: entries load,
        compiles are kept in memory."""
        path = Path(cache_dir).expanduser().absolute()
        base = path
        if prefix:
            if path.name != prefix:
                raise AdaptorConfigError(
                    f"cache_dir {path} does not end with prefix {prefix!r}; pass "
                    f"cache_dir=<base>/{prefix} (the base directory is shared by all prefixes)"
                )
            base = path.parent
        store = CacheStore(base)
        self.close()
        self.cache_dir, self.base_cache_dir = path, base
        self.prefix, self.disable_cache = prefix, disable_cache
        self.store = store
        if self.name != "eager":
            # Inductor's and Triton's own caches, for what runs outside a compile or a load
            # (runtime autotuning): inside the base, or a private directory where it is read-only
            kernels = base if store.writable else self._scratch_root()
            _CacheEnvironment.acquire(base, kernels)
            self._holds_env = True
        self._hash = None

    def machine_probes(self) -> contextlib.AbstractContextManager[None]:
        """:func:`machine_probes` with this adaptor's cache store (nothing for eager)."""
        if self.name == "eager":
            return contextlib.nullcontext()
        return machine_probes(self.store)

    def warm_up(self) -> None:
        """Pay Inductor's one-time start-up now rather than in the first compile or load (the
        CPU vector-ISA probe), answered from the cache where it was recorded."""
        self._require_cache()
        if self.name != "eager":
            warm_up(self.store)

    def _scratch_root(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="torchshim-kernels-"))
        return self._scratch

    @property
    def persists(self) -> bool:
        """Whether compiles are stored (a trusted, writable cache, caching not disabled)."""
        store = self.store
        return store is not None and store.enabled and store.writable and not self.disable_cache

    def close(self) -> None:
        """Give back the process-wide state this adaptor changed (environment variables) and the
        private copies of the entries it loaded."""
        if self._holds_env:
            _CacheEnvironment.release()
            self._holds_env = False
        if self.store is not None:
            self.store.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> CompilerInterface:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_cache(self) -> Path:
        if self.base_cache_dir is None:
            raise AdaptorConfigError(
                f"{type(self).__name__}: call initialize_cache(cache_dir) before compile/load"
            )
        return self.base_cache_dir

    def entry_id(self, key: str, runtime_shape: int | None) -> str:
        """The cache-store entry of a compile: this adaptor, its compiler hash, the prefix, the
        caller's key and the shape, hashed (the caller's key may be any text)."""
        text = stable_json([self.name, self._current_hash(), self.prefix, key, runtime_shape])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def cached_handle(self, key: str, runtime_shape: int | None = None) -> Handle | None:
        """The handle of an earlier compile with this ``key`` and shape in the cache store, or
        ``None`` (not there, from another build, or failing verification: then quarantined)."""
        store = self.store
        if store is None or not store.enabled or self.disable_cache:
            return None
        entry = self.entry_id(key, runtime_shape)
        manifest = store.read_manifest(entry, {"build": self._current_hash()})
        if manifest is None:
            return None
        try:
            return handle_from_json(str(manifest["meta"]["handle"]))
        except (KeyError, TypeError, HandleFormatError):
            store.count("corrupt", entry)
            return None

    def _entry_meta(self, handle: Handle, key: str) -> dict[str, Any]:
        return {
            "build": self._current_hash(),
            "adaptor": self.name,
            "runtime_shape": handle.runtime_shape,
            "handle": handle.to_json(),
            "factors": self.compute_hash_factors(),
            "key": key,
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

    # -- hashing -------------------------------------------------------------------------------
    def compute_hash_factors(self) -> dict[str, str]:
        """Everything about the compiler that must match for an artifact to be reused."""
        shim = active()
        factors = dict(shim.module.hash_factors())
        factors.update(
            {
                "adaptor": self.name,
                "shim": shim.module_name,
                "torch_series": str(shim.series),
                "cache_format_version": str(CACHE_FORMAT_VERSION),
            }
        )
        return factors

    def compute_hash(self, *args: Any, **kwargs: Any) -> str:
        """A short digest of :meth:`compute_hash_factors` (extra arguments, e.g. an engine's
        config object as in the reference design, are accepted and not used)."""
        return hashlib.sha256(stable_json(self.compute_hash_factors()).encode()).hexdigest()[:20]

    def _current_hash(self) -> str:
        if self._hash is None:
            self._hash = self.compute_hash()
        return self._hash

    def _check_handle(self, handle: Any, expected: type[H]) -> H:
        if isinstance(handle, (str, bytes)):
            handle = handle_from_json(handle)
        if not isinstance(handle, Handle):
            raise HandleFormatError(
                f"{self.name}.load expects a {expected.__name__}, got {type(handle).__name__}"
            )
        if handle.adaptor != self.name or not isinstance(handle, expected):
            raise ForeignHandleError(
                f"handle was written by adaptor {handle.adaptor!r}, this is {self.name!r}; "
                "load it with the adaptor that compiled it, or recompile"
            )
        if handle.format_version != CACHE_FORMAT_VERSION:
            raise ForeignHandleError(
                f"handle has cache format version {handle.format_version}, this torchshim writes "
                f"{CACHE_FORMAT_VERSION}; recompile (the old artifact cannot be trusted)"
            )
        current = self._current_hash()
        if handle.compiler_hash != current:
            raise ForeignHandleError(
                f"handle was compiled with compiler hash {handle.compiler_hash}, the current one is "
                f"{current} (another torch build, device, Triton or Inductor config); recompile. "
                "compute_hash_factors() lists what goes into the hash."
            )
        return handle

    def _compile_config(
        self, compiler_config: dict[str, Any] | None, runtime_shape: int | None
    ) -> dict[str, Any]:
        """The caller's Inductor config, tuned harder for a specific size (compiled once, served
        often: ``max_autotune``) unless the caller says otherwise.

        Not coordinate-descent tuning, unlike the reference design: Inductor runs it at the first
        call of a kernel, and a process that loads the kernel runs it again (pytorch/pytorch#172819,
        measured in matrix/GPU.md), so a loaded graph would tune, rebuild Triton kernels and write
        tuning results at load. A caller who asks for it gets it, with a warning."""
        config = dict(compiler_config or {})
        if isinstance(runtime_shape, int):
            config.setdefault("max_autotune", True)
        config.update(active().module.artifact_config())
        if config.get("coordinate_descent_tuning"):
            _warn_once(
                "coordesc",
                "coordinate_descent_tuning=True: Inductor tunes at the first call, also in "
                "every process that loads the graph (pytorch/pytorch#172819), so loads of these "
                "graphs re-tune and rebuild kernels",
            )
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
        self, graph: Any, example_inputs: Sequence[Any], runtime_shape: int | None
    ) -> contextlib.AbstractContextManager[IsolatedCompile]:
        """Fake inputs in a shape environment of their own (Dynamo's is never touched), with the
        batch symbol bound to ``runtime_shape`` when the compile is specialised."""
        shim = active().module
        described = self._same_graph_everywhere(graph, example_inputs)
        bindings: dict[str, int] = {}
        if isinstance(runtime_shape, int):
            if isinstance(runtime_shape, bool) or runtime_shape < 0:
                raise AdaptorConfigError(
                    f"runtime_shape must be None (general) or a batch size >= 0, got "
                    f"{runtime_shape!r}"
                )
            if described.batch_symbol is not None:
                bindings[described.batch_symbol] = runtime_shape
        return shim.isolated_inputs(graph, example_inputs, bindings)

    def _accept_guards(
        self,
        guards: Sequence[str],
        graph: Any,
        example_inputs: Sequence[Any],
        runtime_shape: int | None,
    ) -> bool:
        """Whether a compile that made Inductor assume ``guards`` can be used. A specialised
        compile must not depend on any size but the batch (it would serve calls those guards do
        not hold for, and Dynamo's frame must not be guarded by it); a general one makes
        Dynamo guard on them here, as a loading process will."""
        if not guards:
            return True
        if isinstance(runtime_shape, int):
            log.warning(
                "%s: specialising for batch size %d made Inductor assume conditions on other "
                "input sizes (%d guard(s), e.g. %s); not using it, the general graph serves that "
                "size",
                self.name,
                runtime_shape,
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
    def compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        compiler_config: dict[str, Any] | None,
        runtime_shape: int | None = None,
        key: str | None = None,
    ) -> tuple[CompiledCallable | None, Handle | None]:
        """Compile ``graph``. ``runtime_shape=None``: the inputs' batch size is symbolic; an
        int: specialise for it. Returns ``(None, None)`` when the compiler rejects the graph."""

    @abc.abstractmethod
    def load(
        self,
        handle: Handle | str,
        graph: Any,
        example_inputs: Sequence[Any],
        graph_index: int,
        runtime_shape: int | None = None,
    ) -> CompiledCallable:
        """Turn ``handle`` into a callable without compiling; a :class:`LoadError` otherwise."""


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
