"""The adaptor contract, ``CompilerInterface``: what every adaptor does with a cache directory,
hashes, handles and graphs; subclasses compile and load."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from torchshim._stable import stable_json
from torchshim.adaptors.environment import CacheEnvironment
from torchshim.adaptors.graphs import graph_digest, graph_inputs, parameter_constants
from torchshim.adaptors.handles import (
    CACHE_FORMAT_VERSION,
    EagerHandle,
    Handle,
    InductorHandle,
    RuntimeShape,
    StandaloneHandle,
    handle_from_json,
)
from torchshim.adaptors.machine import machine_probes, torch_source_key, warm_up
from torchshim.adaptors.tuning import PendingTuning
from torchshim.cache import CacheStore, TieredStore, remote_from_environment
from torchshim.errors import (
    AdaptorConfigError,
    ForeignHandleError,
    HandleFormatError,
)
from torchshim.shims import GraphInputs, active

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CompiledCallable",
    "CompilerInterface",
    "EagerHandle",
    "GraphInputs",
    "Handle",
    "InductorHandle",
    "StandaloneHandle",
    "graph_digest",
    "graph_inputs",
    "handle_from_json",
    "parameter_constants",
]

log = logging.getLogger(__name__)

CompiledCallable = Callable[..., Any]
H = TypeVar("H", bound="Handle")


class CompilerInterface(abc.ABC):
    """One compiler behind the contract engines call (names as in vLLM's compiler interface).

    ``initialize_cache`` adopts a directory; ``compute_hash`` returns the compiler's factors for
    the engine's cache key; ``compile`` returns ``(callable | None, handle | None)``; ``load``
    turns a handle back into a callable without compiling, or raises a :class:`LoadError` that
    the caller treats as a miss. Use as a context manager (or call :meth:`close`) to restore the
    process-wide state ``initialize_cache`` changed.
    """

    name: ClassVar[str] = "base"
    #: Whether compiles and loads run Inductor (its cache location, its machine probes).
    uses_inductor: ClassVar[bool] = True
    #: Whether a compile produces an artifact to store (eager's does not: nothing is compiled).
    stores_artifacts: ClassVar[bool] = True

    def __init__(self) -> None:
        self.cache_dir: Path | None = None
        self.base_cache_dir: Path | None = None
        self.prefix = ""
        self.disable_cache = False
        self.store: CacheStore | None = None
        #: the remote tier's URL for :meth:`initialize_cache` (``None``: ``TORCHSHIM_REMOTE``;
        #: ``""``: none)
        self.remote: str | None = None
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
        compiles are kept in memory. With a remote tier (:attr:`remote`, else
        ``TORCHSHIM_REMOTE``) a local miss is looked up there and every compile is published there
        too (see :mod:`torchshim.cache.tiers`)."""
        path = Path(cache_dir).expanduser().absolute()
        base = path
        if prefix:
            if path.name != prefix:
                raise AdaptorConfigError(
                    f"cache_dir {path} does not end with prefix {prefix!r}; pass "
                    f"cache_dir=<base>/{prefix} (the base directory is shared by all prefixes)"
                )
            base = path.parent
        store = TieredStore(base, remote=remote_from_environment(self.remote))
        self.close()
        self.cache_dir, self.base_cache_dir = path, base
        self.prefix, self.disable_cache = prefix, disable_cache
        self.store = store
        if self.uses_inductor:
            # Inductor's and Triton's own caches, for what runs outside a compile or a load
            # (runtime autotuning): inside the base; a private directory where the base is
            # read-only, or shared (Inductor unpickles what it finds there, unsigned)
            private = store.writable and not store.shared
            kernels = base if private else self._scratch_root()
            CacheEnvironment.acquire(base, kernels)
            self._holds_env = True
        self._hash = None

    def machine_probes(self) -> contextlib.AbstractContextManager[None]:
        """:func:`machine_probes` with this adaptor's cache store (nothing for eager)."""
        if not self.uses_inductor:
            return contextlib.nullcontext()
        return machine_probes(self.store)

    def warm_up(self) -> None:
        """Pay Inductor's one-time start-up now rather than in the first compile or load (the
        CPU vector-ISA probe), answered from the cache where it was recorded."""
        self._require_cache()
        if self.uses_inductor:
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

    def save_tuning(self) -> int:
        """Store the kernel tuning results the graphs' first calls wrote; the number of files
        (nothing to store here: see :class:`~torchshim.adaptors.stored.StoredCompiler`)."""
        return 0

    def detach_tuning(self) -> PendingTuning | None:
        """The directories whose tuning results are still to come, kept after :meth:`close`
        (``None`` here: see :class:`~torchshim.adaptors.stored.StoredCompiler`)."""
        return None

    def close(self) -> None:
        """Give back the process-wide state this adaptor changed (environment variables) and the
        private copies of the entries it loaded."""
        if self._holds_env:
            CacheEnvironment.release()
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

    def entry_id(self, key: str, runtime_shape: RuntimeShape) -> str:
        """The cache-store entry of a compile: this adaptor, its compiler hash, the prefix, the
        caller's key and the shape, hashed (the caller's key may be any text)."""
        text = stable_json([self.name, self._current_hash(), self.prefix, key, runtime_shape])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def cached_handle(self, key: str, runtime_shape: RuntimeShape = None) -> Handle | None:
        """The handle of an earlier compile with this ``key`` and shape in the cache store, or
        ``None`` (not there, from another build, or failing verification: then quarantined)."""
        store = self.store
        if store is None or not store.enabled or self.disable_cache:
            return None
        entry = self.entry_id(key, runtime_shape)
        manifest = store.read_manifest(entry, {"build": self._current_hash()}, key)
        if manifest is None:
            return None
        try:
            return handle_from_json(str(manifest["meta"]["handle"]))
        except (KeyError, TypeError, HandleFormatError):
            store.count("corrupt", entry)
            return None

    def compute_hash_factors(self) -> dict[str, str]:
        """Everything about the compiler that must match for an artifact to be reused."""
        shim = active()
        factors = dict(shim.module.hash_factors(torch_source_key()))
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

    @abc.abstractmethod
    def compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        compiler_config: dict[str, Any] | None,
        runtime_shape: RuntimeShape = None,
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
        runtime_shape: RuntimeShape = None,
    ) -> CompiledCallable:
        """Turn ``handle`` into a callable without compiling; a :class:`LoadError` otherwise."""
