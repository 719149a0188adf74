"""Canonical JSON of config-like values, identical across processes (keys and digests)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["stable_digest", "stable_json"]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if callable(value):
        module = getattr(value, "__module__", None) or "?"
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"<callable {module}.{name}>"
    # Objects whose repr carries a memory address would make the digest differ per process.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def stable_json(value: Any) -> str:
    """A canonical JSON text for config-like values, identical across processes."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def stable_digest(value: Any) -> str:
    """sha256 of :func:`stable_json`."""
    return hashlib.sha256(stable_json(value).encode()).hexdigest()
