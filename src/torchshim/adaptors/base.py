"""The adaptor contract (``CompilerInterface``), typed handles and the shared cache environment."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from torchshim._patching import patch_environ
from torchshim.errors import (
    AdaptorConfigError,
    CacheDirError,
    ForeignHandleError,
    HandleFormatError,
    UnsupportedGraphError,
)
from torchshim.shims import active
from torchshim.shims._common import stable_json

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CompiledCallable",
    "CompilerInterface",
    "EagerHandle",
    "Handle",
    "InductorHandle",
    "StandaloneHandle",
    "handle_from_json",
    "parameter_constants",
]

log = logging.getLogger(__name__)

#: Bumped whenever the on-disk layout or the handle schema changes; part of every compiler hash.
CACHE_FORMAT_VERSION = 1

CompiledCallable = Callable[..., Any]
H = TypeVar("H", bound="Handle")

INDUCTOR_SUBDIR = "inductor"
TRITON_SUBDIR = "triton"


@dataclass(frozen=True)
class Handle:
    """What ``load`` needs to find a compiled artifact again, in a fresh process or on another
    machine. Holds no absolute path: ``path`` fields are relative to the cache base directory."""

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
    """An FX-graph-cache entry: its key, and the generated module (for humans, relative)."""

    key: str
    module_path: str | None = None

    kind: ClassVar[str] = "inductor"


@dataclass(frozen=True)
class StandaloneHandle(Handle):
    """A saved ``CompiledArtifact``: where it lies (relative) and in which format."""

    path: str
    artifact_format: str

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
                f"{kind} handle holds a path outside its cache directory ({value!r}); handles "
                "hold paths relative to the cache directory only"
            )
    return handle


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


class _CacheEnvironment:
    """Points Inductor's and Triton's caches inside one base directory, process-wide, for as long
    as an adaptor holds it. Reference-counted; restored when the last holder closes."""

    _lock = threading.Lock()
    _base: Path | None = None
    _holders = 0
    _stack: contextlib.ExitStack | None = None

    @classmethod
    def acquire(cls, base: Path) -> None:
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
                            "TORCHINDUCTOR_CACHE_DIR": str(base / INDUCTOR_SUBDIR),
                            "TRITON_CACHE_DIR": str(base / TRITON_SUBDIR),
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
        self._holds_env = False
        self._hash: str | None = None

    # -- cache directory -----------------------------------------------------------------------
    def initialize_cache(
        self, cache_dir: str | os.PathLike[str], disable_cache: bool = False, prefix: str = ""
    ) -> None:
        """Adopt ``cache_dir``. With ``prefix`` (``cache_dir=/c/backbone, prefix="backbone"``) the
        base directory, which holds Inductor's and Triton's caches, is ``/c``, shared by every
        part of a model; artifacts of this part go under ``cache_dir``."""
        path = Path(cache_dir).expanduser().absolute()
        base = path
        if prefix:
            if path.name != prefix:
                raise AdaptorConfigError(
                    f"cache_dir {path} does not end with prefix {prefix!r}; pass "
                    f"cache_dir=<base>/{prefix} (the base directory is shared by all prefixes)"
                )
            base = path.parent
        for directory in (path, base / INDUCTOR_SUBDIR, base / TRITON_SUBDIR):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheDirError(
                    f"cannot create cache directory {directory}: {exc.strerror or exc}. Pass a "
                    "writable directory as cache_dir."
                ) from exc
        if not os.access(path, os.W_OK | os.X_OK):
            raise CacheDirError(f"cache directory {path} is not writable; pass a writable one")
        self.close()
        self.cache_dir, self.base_cache_dir = path, base
        self.prefix, self.disable_cache = prefix, disable_cache
        if self.name != "eager":
            _CacheEnvironment.acquire(base)
            self._holds_env = True
        self._hash = None

    def close(self) -> None:
        """Give back the process-wide state this adaptor changed (environment variables)."""
        if self._holds_env:
            _CacheEnvironment.release()
            self._holds_env = False

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

    def _relative(self, path: str | os.PathLike[str] | None) -> str | None:
        if path is None or self.base_cache_dir is None:
            return None
        try:
            return Path(path).absolute().relative_to(self.base_cache_dir).as_posix()
        except ValueError:
            return None

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
        often: max-autotune and coordinate-descent tuning) unless the caller says otherwise."""
        config = dict(compiler_config or {})
        if isinstance(runtime_shape, int):
            config.setdefault("max_autotune", True)
            config.setdefault("coordinate_descent_tuning", True)
        return config

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
