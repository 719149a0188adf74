"""Typed handles: what ``load`` needs to find a compiled artifact again, as plain JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

from torchshim.errors import (
    HandleFormatError,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EagerHandle",
    "Handle",
    "InductorHandle",
    "RuntimeShape",
    "StandaloneHandle",
    "check_runtime_shape",
    "handle_from_json",
    "shape_label",
]

#: Bumped whenever the on-disk layout or the handle schema changes; part of every compiler hash.
CACHE_FORMAT_VERSION = 2

#: What a compile is for: ``None`` the general (symbolic) batch, an int one batch size, a pair
#: ``(lo, hi)`` a compile range (the batch symbol bounded to ``lo..hi``, inclusive).
RuntimeShape = int | tuple[int, int] | None


def check_runtime_shape(value: object) -> RuntimeShape:
    """``value`` as a :data:`RuntimeShape` (a JSON list becomes a pair); ``ValueError`` when it
    is none of them."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a batch size is >= 0, got {value}")
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) and 0 <= lo <= hi:
            return (int(lo), int(hi))
    raise ValueError(
        f"runtime_shape is None (general), a batch size or a range (lo, hi) with 0 <= lo <= hi; "
        f"got {value!r}"
    )


def shape_label(runtime_shape: RuntimeShape) -> str:
    if runtime_shape is None:
        return "general"
    if isinstance(runtime_shape, tuple):
        return f"range {runtime_shape[0]}-{runtime_shape[1]}"
    return f"size {runtime_shape}"


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
    runtime_shape: RuntimeShape

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
    try:
        data["runtime_shape"] = check_runtime_shape(data.get("runtime_shape"))
    except ValueError as exc:
        raise HandleFormatError(f"{kind} handle: {exc}; recompile") from None
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
