"""A store's directory: opened and verified once, then every path in it reached relative to a
descriptor of the verified root, never through a symbolic link (see ``trust`` for who may own
it), with private places to stage and check out, and temporaries cleaned by lease."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, TypeVar

from torchshim import config
from torchshim.cache import leases
from torchshim.cache.files import (
    UnsafePath,
    atomic_write_at,
    make_dir_at,
    open_dir,
    remove_tree_at,
)
from torchshim.cache.manifest import STORE_FORMAT
from torchshim.cache.trust import untrusted_reason, untrusted_subdir
from torchshim.errors import CacheDirError

__all__ = ["SUBDIRS", "TAG", "StoreDirectory"]

log = logging.getLogger(__name__)

_D = TypeVar("_D", bound="StoreDirectory")

TAG = "torchshim-cache.json"
SUBDIRS = ("entries", "quarantine", "tmp", "locks", "probes")
#: Inductor's and Triton's caches inside a private store (see adaptors.environment)
KERNEL_SUBDIRS = ("inductor", "triton")
_TEMP_PREFIXES = ("stage-", "checkout-", "trash-", ".")


class StoreDirectory:
    """A cache directory. ``enabled`` is False when the directory cannot be trusted (one warning,
    nothing read or written, nothing created); ``writable`` is False for a read-only directory
    (hits load, misses compile in memory, nothing is written).

    ``create=False`` (the operator's tools) never creates anything; ``maintain=False`` also
    leaves abandoned temporaries alone (a read-only look such as ``cache info``)."""

    _warned: ClassVar[set[str]] = set()
    _warned_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        maintain: bool = True,
        shared: bool | None = None,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        #: ``None``: ``TORCHSHIM_CACHE_SHARED``; the user's own directory passes ``False``
        self.shared = config.cache_shared() if shared is None else shared
        self.key = config.cache_key()
        self.dir_mode = 0o2770 if self.shared else 0o700
        self.file_mode = 0o660 if self.shared else 0o600
        self._private: Path | None = None
        self._fd: int | None = None
        self.enabled = True
        self.writable = True
        self._create = create
        self.reason: str | None = None
        reason = untrusted_reason(self.root, shared=self.shared)
        if reason is None and create and not self.root.exists():
            self._create_root()
            # what was created must pass the same check (a link planted meanwhile, a mode)
            reason = untrusted_reason(self.root, shared=self.shared)
        if reason is None and not self.root.is_dir():
            raise CacheDirError(
                f"cache directory {self.root} does not exist or is not a directory; create it "
                "or pass another one"
            )
        if reason is None:
            reason = self._open_root()
        if reason is not None:
            self._disable(reason)
            return
        if self.shared and self.key is None:
            self._warn_once(
                f"unsigned-shared:{self.root}",
                f"torchshim: cache directory {self.root} is shared (TORCHSHIM_CACHE_SHARED=1) and "
                "TORCHSHIM_CACHE_KEY is not set: entries that anyone who can write it puts there "
                "are loaded as code. Set TORCHSHIM_CACHE_KEY, a secret shared by the writers.",
            )
        if self.writable:
            self.writable = self._probe_writable()
            if not self.writable:
                self.reason = "read-only"
                log.info(
                    "cache directory %s is read-only: hits load, misses are not stored", self.root
                )
        reason = self._check_subdirs()
        if reason is not None:
            self._disable(reason)
            return
        if self.writable:
            if create:
                self._write_tag()
            if maintain:
                self.clean_stale()

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open_existing(cls: type[_D], root: str | os.PathLike[str], *, maintain: bool = True) -> _D:
        """An existing store for the operator's tools: nothing is created, and a directory that
        is not a torchshim cache is a :class:`CacheDirError`."""
        path = Path(root).expanduser().absolute()
        try:
            info = os.lstat(path / TAG)
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise CacheDirError(f"{path} is not a torchshim cache (it holds no {TAG})")
        return cls(path, create=False, maintain=maintain)

    def _create_root(self) -> None:
        """Create the missing directories down to the root, each with the store's mode (not
        the umask's) through a descriptor, never through a link."""
        missing: list[str] = []
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            missing.append(existing.name)
            existing = existing.parent
        try:
            fd = open_dir(existing)
            try:
                for name in reversed(missing):
                    # a directory of its own; processes sharing a cache start together
                    child = make_dir_at(fd, name, self.dir_mode)
                    os.close(fd)
                    fd = child
            finally:
                os.close(fd)
        except OSError as exc:
            raise CacheDirError(
                f"cannot create cache directory {self.root}: {exc.strerror or exc}. Pass a "
                "directory you can write, or create it first."
            ) from exc

    def _open_root(self) -> str | None:
        real = os.path.realpath(self.root)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            return f"cannot open it ({exc.strerror or exc})"
        reason = untrusted_subdir(os.fstat(fd), "it", shared=self.shared)
        if reason is not None:
            os.close(fd)
            return reason
        self._fd = fd
        return None

    def _disable(self, reason: str) -> None:
        self.enabled = self.writable = False
        self.reason = reason
        self._close_fd()
        self._warn_once(
            f"untrusted:{self.root}",
            f"torchshim: not using cache directory {self.root}: {reason}. Anyone who can write "
            "a compile cache can run code as its reader. Use a directory of your own (mode "
            "0700, on a path only you and root can change), or set TORCHSHIM_CACHE_SHARED=1 "
            "(with TORCHSHIM_CACHE_KEY) if it is shared on purpose. Caching is off here.",
        )

    def _check_subdirs(self) -> str | None:
        for sub in SUBDIRS:
            try:
                info = os.stat(sub, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                if not (self.writable and self._create):
                    continue
                try:
                    os.close(make_dir_at(self.fd, sub, self.dir_mode))
                except OSError as exc:
                    return f"cannot create {sub}/ in it ({exc.strerror or exc})"
                info = os.stat(sub, dir_fd=self.fd, follow_symlinks=False)
            reason = untrusted_subdir(info, f"{sub}/ in it", shared=self.shared)
            if reason is not None:
                return reason
        for sub in KERNEL_SUBDIRS:  # Inductor's and Triton's own caches, when they exist
            try:
                info = os.stat(sub, dir_fd=self.fd, follow_symlinks=False)
            except OSError:
                continue
            reason = untrusted_subdir(info, f"{sub}/ in it", shared=self.shared)
            if reason is not None:
                return reason
        return None

    def _write_tag(self) -> None:
        try:
            os.stat(TAG, dir_fd=self.fd, follow_symlinks=False)
            return
        except FileNotFoundError:
            pass
        except OSError:
            return
        with contextlib.suppress(OSError):
            body = {"format": STORE_FORMAT, "what": "torchshim compile cache; safe to delete"}
            mode = 0o640 if self.shared else 0o600
            atomic_write_at(self.fd, TAG, json.dumps(body).encode(), mode)

    @property
    def fd(self) -> int:
        """A descriptor of the verified root (reopened after :meth:`close`)."""
        if self._fd is None:
            reason = self._open_root()
            if reason is not None:
                raise CacheDirError(f"cache directory {self.root} can no longer be used: {reason}")
        if self._fd is None:  # pragma: no cover - _open_root sets it or says why
            raise CacheDirError(f"cache directory {self.root} is not open")
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # -- helpers ------------------------------------------------------------------------------
    def _warn_once(self, token: str, message: str) -> None:
        with self._warned_lock:
            if token in self._warned:
                return
            self._warned.add(token)
        log.warning("%s", message)

    def _probe_writable(self) -> bool:
        name = f".probe-{uuid.uuid4().hex}"
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
        except OSError:
            return False
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=self.fd)
        return True

    def _private_root(self) -> Path:
        """This user's own scratch directory (shared or read-only stores stage and check out
        there): a fresh ``mkdtemp``, mode 0700."""
        if self._private is None:
            self._private = Path(tempfile.mkdtemp(prefix="torchshim-private-"))
        return self._private

    def _temp_dir(self, kind: str) -> Path:
        if self.writable and not self.shared:
            path = self.root / "tmp" / f"{kind}-{uuid.uuid4().hex}"
            with self._opened("tmp") as tmp_fd:
                if tmp_fd is None:
                    raise CacheDirError(f"{self.root / 'tmp'} is missing")
                os.mkdir(path.name, 0o700, dir_fd=tmp_fd)
        else:
            path = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self._private_root()))
        leases.hold(path)
        return path

    @contextlib.contextmanager
    def _opened(self, *parts: str) -> Iterator[int | None]:
        """A descriptor of ``root/parts...`` opened without following links (``None``: absent);
        :class:`UnsafePath` for a link or a non-directory, or, in a private store, a directory
        another user could change."""
        opened: list[int] = []
        current = self.fd
        try:
            for part in parts:
                try:
                    current = open_dir(part, dir_fd=current)
                except FileNotFoundError:
                    yield None
                    return
                opened.append(current)
                reason = untrusted_subdir(os.fstat(current), part, shared=self.shared)
                if reason is not None:
                    raise UnsafePath(errno.EPERM, reason)
            yield current
        finally:
            for fd in reversed(opened):
                os.close(fd)

    def clean_stale(self) -> list[Path]:
        """Remove temporaries whose lease expired (a crashed or killed process's staging
        directories, checkouts and half-written files), whoever made them; never through a
        link: a link planted in ``tmp/`` is removed, not what it points at."""
        removed: list[Path] = []
        places: list[tuple[str, ...]] = [("tmp",), (), ("entries",)]
        with contextlib.suppress(OSError, CacheDirError), self._opened("entries") as fd:
            if fd is not None:
                with os.scandir(fd) as listing:
                    places += [("entries", e.name) for e in listing if len(e.name) == 2]
        for place in places:
            try:
                with self._opened(*place) as fd:
                    if fd is None:
                        continue
                    with os.scandir(fd) as listing:
                        names = [e.name for e in listing]
                    for name in names:
                        if place != ("tmp",) and not name.startswith("."):
                            continue
                        if not name.startswith(_TEMP_PREFIXES) or name.startswith(".probe-"):
                            continue
                        try:
                            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        except OSError:
                            continue
                        if leases.expired(info.st_mtime):
                            remove_tree_at(fd, name)
                            removed.append(self.root.joinpath(*place, name))
            except (OSError, CacheDirError, RecursionError):
                continue
        return removed

    def close(self) -> None:
        """Give back the private scratch directory and the root's descriptor."""
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None
        self._close_fd()
