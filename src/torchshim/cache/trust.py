"""Who may be trusted with a cache directory, and the settings that say so.

A compile cache is code: loading an entry imports generated Python and loads shared objects. So a
directory that another user owns, or that group or others can write, is not used unless the
operator says the directory is shared on purpose (``TORCHSHIM_CACHE_SHARED=1``). With
``TORCHSHIM_CACHE_KEY`` set, entries are signed (HMAC-SHA256) and an entry whose signature does not
verify is a miss, so a shared or copied cache cannot be changed unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

__all__ = [
    "CACHE_DIR_ENV",
    "KEY_ENV",
    "SHARED_ENV",
    "STRICT_ENV",
    "default_cache_dir",
    "env_flag",
    "sign",
    "signing_key",
    "untrusted_reason",
]

CACHE_DIR_ENV = "TORCHSHIM_CACHE_DIR"
SHARED_ENV = "TORCHSHIM_CACHE_SHARED"
KEY_ENV = "TORCHSHIM_CACHE_KEY"
STRICT_ENV = "TORCHSHIM_STRICT"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def default_cache_dir() -> Path:
    """``$TORCHSHIM_CACHE_DIR``, else the user's cache directory (``~/.cache/torchshim`` on Linux),
    never a predictable name in the shared temporary directory."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("torchshim", appauthor=False))


def untrusted_reason(path: Path) -> str | None:
    """Why ``path`` must not be used as a cache (``None``: it may)."""
    if env_flag(SHARED_ENV):
        return None
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot inspect it ({exc.strerror or exc})"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others can write it (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def signing_key() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def signature_verifies(key: bytes, payload: bytes, signature: object) -> bool:
    """Whether ``signature`` is ``payload``'s signature with ``key`` (constant-time)."""
    return hmac.compare_digest(str(signature or ""), sign(key, payload))
