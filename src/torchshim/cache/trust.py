"""Who may be trusted with a cache directory, and the signatures that protect a shared one.

A compile cache is code: loading an entry imports generated Python and loads shared objects. So a
cache is used only where nobody but this user (and root) can change what it holds. That is a
property of the whole path, not of the last directory: a directory anywhere above the cache that
another user can write (without the sticky bit, as ``/tmp`` has) lets that user rename the cache
away and put their own in its place. :func:`untrusted_reason` resolves the path through symbolic
links and checks every directory from ``/`` down, as ssh, pip and ccache do:

* each directory must be owned by root or by this user;
* a directory above the cache may be writable by others only with the sticky bit set;
* the cache directory itself and everything the store keeps in it must not be writable by group
  or others, and must not be a symbolic link.

``TORCHSHIM_CACHE_SHARED=1`` says a directory is shared on purpose (several users or containers,
one group): the path is not required to be private, and instead nothing in it is trusted but the
key: with ``TORCHSHIM_CACHE_KEY`` set, an entry is used only when its manifest, which binds the
entry's id, key and every file's SHA-256, carries a valid HMAC-SHA256 signature.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from torchshim import config

__all__ = [
    "default_cache_dir",
    "sign",
    "signature_verifies",
    "untrusted_reason",
    "untrusted_subdir",
]


def default_cache_dir() -> Path:
    """``$TORCHSHIM_CACHE_DIR``, else the user's cache directory (``~/.cache/torchshim`` on Linux),
    never a predictable name in the shared temporary directory."""
    configured = config.cache_dir()
    if configured is not None:
        return configured
    import platformdirs

    return Path(platformdirs.user_cache_dir("torchshim", appauthor=False))


def _me() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def _owner_ok(info: os.stat_result) -> bool:
    return info.st_uid in (0, _me())


def _existing_ancestor(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def untrusted_reason(path: Path, *, shared: bool | None = None) -> str | None:
    """Why ``path`` must not be used as a private cache (``None``: it may). ``path`` need not
    exist yet: what exists of it is checked, and what is missing will be created by this user.
    With ``shared`` (default: ``TORCHSHIM_CACHE_SHARED``) only the type of the path is checked."""
    if shared is None:
        shared = config.cache_shared()
    absolute = Path(os.path.abspath(path))
    existing = _existing_ancestor(absolute)
    real = Path(os.path.realpath(existing))
    try:
        info = real.stat()
    except OSError as exc:
        return f"cannot inspect {real} ({exc.strerror or exc})"
    if not stat.S_ISDIR(info.st_mode):
        return None  # not a place for a cache at all: creating or opening it says so
    if shared:
        return None
    # the resolved path and the path as given: a link on the way is only as safe as the
    # directory that holds it
    chain: list[Path] = []
    for each in (*reversed([real, *real.parents]), *reversed([existing, *existing.parents])):
        if each not in chain:
            chain.append(each)
    for directory in chain:
        try:
            info = directory.stat()
        except OSError as exc:
            return f"cannot inspect {directory} ({exc.strerror or exc})"
        here = directory in (real, existing) and existing == absolute
        if not _owner_ok(info):
            where = "it" if here else f"{directory}, a directory on its path,"
            return f"{where} is owned by uid {info.st_uid}, not by this user (uid {_me()}) or root"
        mode = stat.S_IMODE(info.st_mode)
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            if here:
                return f"group or others can write it (mode {mode:o})"
            if not info.st_mode & stat.S_ISVTX:
                return (
                    f"group or others can write {directory}, a directory on its path (mode "
                    f"{mode:o}, no sticky bit), so they can replace what is below it"
                )
    return None


def untrusted_subdir(info: os.stat_result, name: str, *, shared: bool) -> str | None:
    """Why a directory the store keeps (``entries/``, ``tmp/``, an entry) must not be used, from
    its ``lstat``: a link or a non-directory always; in a private store also another owner or
    group/others write access."""
    if stat.S_ISLNK(info.st_mode):
        return f"{name} is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return f"{name} is not a directory"
    if shared:
        return None
    if not _owner_ok(info):
        return f"{name} is owned by uid {info.st_uid}, not by this user (uid {_me()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others can write {name} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def signature_verifies(key: bytes, payload: bytes, signature: object) -> bool:
    """Whether ``signature`` is ``payload``'s signature with ``key`` (constant-time). Anything but
    a string of the right form (another type, non-ASCII text) is simply not a valid signature."""
    if not isinstance(signature, str):
        return False
    try:
        given = signature.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, sign(key, payload).encode("ascii"))
