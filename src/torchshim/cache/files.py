"""File primitives of the cache store: atomic publish, fsync, hashing while copying."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LockTimeout",
    "atomic_write",
    "copy_hashed",
    "file_lock",
    "fsync_dir",
    "fsync_tree",
    "sha256_file",
    "temp_name",
    "tree_files",
]

_CHUNK = 1 << 20


def temp_name(final: Path, tag: str = "tmp") -> Path:
    """A temporary name beside ``final``: same directory (so ``os.replace`` is a rename), a random
    suffix (PIDs repeat across containers sharing a volume), a leading dot (never mistaken for an
    entry by readers)."""
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside ``path`` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` so that readers see the old file or the new one, never a part:
    a temporary file in the same directory, fsync, ``os.replace``, fsync of the directory."""
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def tree_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (symbolic links are not followed nor listed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def fsync_tree(root: Path) -> None:
    for path in tree_files(root):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for dirpath, _dirnames, _files in os.walk(root):
        fsync_dir(Path(dirpath))


def copy_hashed(source: Path, target: Path) -> tuple[str, int]:
    """Copy ``source`` to ``target`` and return the SHA-256 and size of exactly the bytes written,
    so that what a reader uses is what was verified (no window between check and use)."""
    digest = hashlib.sha256()
    size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    shutil.copymode(source, target)
    return digest.hexdigest(), size


class LockTimeout(TimeoutError):
    """:func:`file_lock` waited longer than its timeout."""


@contextlib.contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block, waiting at most ``timeout`` seconds.

    The kernel releases an ``flock`` when its holder dies, so a crash never blocks the others.
    The lock is held through two descriptors of one open file: with torch 2.7 and 2.8, the
    descriptor of a ``filelock`` lock held across an Inductor compile was found closed at release
    (EBADF), so one stray close must neither release the lock early nor make its release fail. A
    descriptor is closed at the end only if it still refers to the lock file.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    inode = os.fstat(fd).st_ino
    spare = os.dup(fd)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} is held by another process") from None
                time.sleep(0.05)
        yield
    finally:
        for descriptor in (fd, spare):
            with contextlib.suppress(OSError):
                if os.fstat(descriptor).st_ino != inode:
                    continue  # the number was closed by someone else and reused: not ours
                fcntl.flock(descriptor, fcntl.LOCK_UN)
                os.close(descriptor)
