"""File primitives of the cache store: atomic publish, fsync, hashing while copying."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LockTimeout",
    "UnsafePath",
    "atomic_write",
    "atomic_write_at",
    "copy_entry_files",
    "copy_verified",
    "file_lock",
    "fsync_dir",
    "fsync_tree",
    "link_tree",
    "make_dir_at",
    "open_dir",
    "open_relative",
    "parents_at",
    "read_file_at",
    "read_limited",
    "remove_tree_at",
    "sha256_file",
    "tree_files",
]

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside ``path`` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(final: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``final`` so that readers see the old file or the new one, never a part:
    a temporary file in the same directory, fsync, ``os.replace``, fsync of the directory."""
    fd = open_dir(final.parent)
    try:
        atomic_write_at(fd, final.name, data, mode)
    finally:
        os.close(fd)


def atomic_write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """:func:`atomic_write` of ``name`` inside the directory ``dir_fd``: the temporary is created
    exclusively without following links and gets ``mode`` through its descriptor (never a
    path-based chmod, which a link swapped in meanwhile would redirect)."""
    tmp = f".{name}.tmp-{uuid.uuid4().hex}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        out = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            os.fchmod(out, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


@contextlib.contextmanager
def parents_at(dir_fd: int, rel: str, mode: int) -> Iterator[tuple[int, str]]:
    """``(descriptor of rel's directory, rel's file name)``: the directories of ``rel`` under
    ``dir_fd`` created (or found) one :func:`make_dir_at` at a time, closed after the block."""
    *parents, name = rel.split("/")
    opened: list[int] = []
    current = dir_fd
    try:
        for part in parents:
            current = make_dir_at(current, part, mode)
            opened.append(current)
        yield current, name
    finally:
        for held in reversed(opened):
            os.close(held)


def make_dir_at(dir_fd: int, name: str, mode: int) -> int:
    """Create directory ``name`` under ``dir_fd`` (or find it) and give it ``mode`` through a
    descriptor opened without following links; the descriptor (the caller closes it). A link or
    a directory of another user in its place is :class:`UnsafePath`."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=dir_fd)
    fd = open_dir(name, dir_fd=dir_fd)
    info = os.fstat(fd)
    if info.st_uid == getattr(os, "geteuid", lambda: -1)():
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    elif mode & 0o077 == 0:  # a private directory must be ours
        os.close(fd)
        raise UnsafePath(errno.EPERM, f"{name} belongs to uid {info.st_uid}")
    return fd


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


def link_tree(source: Path, target: Path) -> None:
    """A copy of the directory tree ``source`` at ``target`` (created, private) whose files are
    hard links to those of ``source`` (copies where the file system refuses a link), its
    directories synced (the files' data is ``source``'s, synced already by the caller). Only
    directories and regular files are taken; symbolic links are neither followed nor copied."""
    os.mkdir(target, 0o700)
    made = [target]
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        there = target / here.relative_to(source)
        for name in dirnames:
            if not (here / name).is_symlink():
                (there / name).mkdir(mode=0o700)
                made.append(there / name)
        for name in filenames:
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                os.link(path, there / name, follow_symlinks=False)
            except OSError:
                shutil.copy2(path, there / name, follow_symlinks=False)
    for directory in made:
        fsync_dir(directory)


def fsync_tree(root: Path) -> None:
    for path in tree_files(root):
        with contextlib.suppress(OSError):
            fd = os.open(path, _FILE_FLAGS)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for dirpath, _dirnames, _files in os.walk(root):
        fsync_dir(Path(dirpath))


class LockTimeout(TimeoutError):
    """:func:`file_lock` waited longer than its timeout."""


class UnsafePath(OSError):
    """A path inside the cache is not what the store wrote: a symbolic link, a device, a FIFO,
    a directory where a file belongs, or larger than its manifest says."""


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)) | getattr(
    os, "O_CLOEXEC", 0
)


def open_dir(name: str | os.PathLike[str], dir_fd: int | None = None) -> int:
    """A descriptor of directory ``name`` (relative to ``dir_fd``), refusing a symbolic link."""
    try:
        return os.open(name, _DIR_FLAGS | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(exc.errno, f"{name} is not a directory (a link or a file)") from None
        raise


def open_relative(dir_fd: int, rel: str) -> int:
    """A read descriptor of the regular file ``rel`` (``a/b/c``) under ``dir_fd``: no component
    is followed through a link, and a device, FIFO or socket is refused before any read (opened
    non-blocking, so a FIFO cannot stall the reader)."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafePath(errno.EINVAL, f"{rel!r} is not a path inside the entry")
    current = dir_fd
    opened: list[int] = []
    try:
        for part in parts[:-1]:
            current = open_dir(part, dir_fd=current)
            opened.append(current)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(exc.errno, f"{rel} is a symbolic link") from None
            raise
    finally:
        for each in opened:
            os.close(each)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafePath(errno.EINVAL, f"{rel} is not a regular file")
    return fd


def read_limited(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``fd``; :class:`UnsafePath` when it holds more."""
    if os.fstat(fd).st_size > limit:
        raise UnsafePath(errno.EFBIG, f"larger than {limit} bytes")
    chunks: list[bytes] = []
    left = limit + 1
    while left > 0:
        chunk = os.read(fd, min(_CHUNK, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise UnsafePath(errno.EFBIG, f"larger than {limit} bytes")
    return data


def read_file_at(dir_fd: int, rel: str, limit: int) -> bytes:
    """The bytes of regular file ``rel`` under ``dir_fd`` (see :func:`open_relative`)."""
    fd = open_relative(dir_fd, rel)
    try:
        return read_limited(fd, limit)
    finally:
        os.close(fd)


def copy_verified(
    dir_fd: int, rel: str, target: Path, size: int, link: bool = False
) -> tuple[str, int]:
    """Copy regular file ``rel`` under ``dir_fd`` to ``target`` (a private place), refusing it
    before copying when its type or size is not what the manifest says, and never copying more
    than ``size`` bytes; the SHA-256 and size of exactly the bytes written. ``link``: where the
    file system allows, give ``target`` the opened file itself (a hard link to that inode, no
    second copy) and hash it there: for a store only this user can write, whose files are never
    changed in place once published."""
    fd = open_relative(dir_fd, rel)
    try:
        found = os.fstat(fd).st_size
        if found != size:
            raise UnsafePath(errno.EINVAL, f"has {found} bytes, the manifest says {size}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)
            except OSError:
                pass  # another file system, no /proc: copy
            else:
                return _hash_fd(fd, size)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            result = _hash_fd(fd, size, out)
            os.fchmod(out, stat.S_IMODE(os.fstat(fd).st_mode) & 0o755 | 0o600)
        finally:
            os.close(out)
        return result
    finally:
        os.close(fd)


def copy_entry_files(
    dir_fd: int, files: Mapping[str, Mapping[str, Any]], scratch: Path, link: bool
) -> str | None:
    """Copy (link, where ``link``) and hash every file a manifest lists (``rel -> {"size",
    "sha256"}``) from the entry at ``dir_fd`` into ``scratch``; the first problem in name order,
    or ``None``."""
    for rel in sorted(files):
        record = files[rel]
        try:
            digest, _ = copy_verified(dir_fd, rel, scratch / rel, record["size"], link)
        except FileNotFoundError:
            return f"its file {rel} is missing"
        except UnsafePath as exc:
            return f"its file {rel} is unusable: {exc.strerror or exc}"
        except OSError as exc:
            return f"its file {rel} is unreadable ({exc.strerror or exc})"
        if digest != record["sha256"]:
            return f"its file {rel} does not match its SHA-256"
    return None


def _hash_fd(fd: int, size: int, out: int | None = None) -> tuple[str, int]:
    """SHA-256 and length of what ``fd`` holds, reading at most ``size + 1`` bytes (one more says
    the file grew); each chunk is written to ``out`` too when one is given."""
    digest, read = hashlib.sha256(), 0
    while read <= size:
        chunk = os.read(fd, min(_CHUNK, size + 1 - read))
        if not chunk:
            break
        digest.update(chunk)
        if out is not None:
            os.write(out, chunk)
        read += len(chunk)
    return digest.hexdigest(), read


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` (a file, or a directory and everything in it) without
    following any symbolic link: a link planted inside is removed, never what it points at."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return
    try:
        fd = open_dir(name, dir_fd=dir_fd)
    except (FileNotFoundError, UnsafePath):
        return
    try:
        with os.scandir(fd) as listing:
            names = [entry.name for entry in listing]
        for child in names:
            try:
                remove_tree_at(fd, child)
            except RecursionError:  # a tree nested deeper than Python recurses: leave the rest
                break
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(name, dir_fd=dir_fd)


@contextlib.contextmanager
def file_lock(
    path: Path, timeout: float, mode: int = 0o600, dir_fd: int | None = None
) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block, waiting at most ``timeout`` seconds.

    The kernel releases an ``flock`` when its holder dies, so a crash never blocks the others.
    The lock file is opened without following a link (a link planted in its place is refused),
    read-only where another user created it (``flock`` needs no write access). The lock is held
    through two descriptors of one open file, so that a stray ``close`` of one number by other
    code in the process (seen with compilers' own file handling) neither releases it early nor
    makes its release fail; a descriptor is closed at the end only if it still refers to it.
    """
    import fcntl

    flags = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    name: str | Path = path.name if dir_fd is not None else path
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | flags, mode, dir_fd=dir_fd)
    except PermissionError:
        fd = os.open(name, os.O_RDONLY | flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(exc.errno, f"lock file {path} is a symbolic link") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafePath(errno.EINVAL, f"lock file {path} is not a regular file")
    if info.st_uid == getattr(os, "geteuid", lambda: -1)() and info.st_nlink == 1:
        with contextlib.suppress(OSError):
            os.fchmod(fd, mode)  # the umask may have narrowed a shared store's group mode
    inode = info.st_ino
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
