"""The cache store: one directory per cache key, published atomically, verified before use.

Layout under the store's root::

    torchshim-cache.json        what this directory is (format), written once
    entries/<id[:2]>/<id>/      one entry: manifest.json + the files it lists
    quarantine/                 entries that failed verification, moved aside for inspection
    tmp/                        staging directories and verified private copies (checkouts)
    locks/                      per-entry lock files (flock: released when a process dies)
    stats.jsonl                 hit/miss/corrupt counters, one JSON line per event (compacted)
    probes/                     machine facts Inductor probes for at start-up (see ``probes``)

An entry is written into a staging directory and becomes visible by one ``rename``, after its files
and its manifest (SHA-256 and size of every file, see ``manifest``) are on disk: a reader sees a
whole entry or none, also after a process was killed at any point of a save. A reader copies an
entry's files into a private checkout while hashing them and uses the copy only when every hash
matches, so what is imported is exactly what was verified. A bad entry is a miss: one warning, a
counter, the entry moved to ``quarantine/`` (``TORCHSHIM_STRICT=1`` raises instead). A published
entry's files never change; ``amend`` may add new ones under a new manifest (see ``amend``).

Every path inside the store is opened relative to a verified descriptor of its root, never
through a symbolic link, and every file is checked for type and size before it is read (see
``trust`` for who may own the root). In a shared store (``TORCHSHIM_CACHE_SHARED=1``) entries are
staged and checked out in this user's private temporary directory, the store's directories and
files are group-readable and -writable (setgid directories keep the group), and with
``TORCHSHIM_CACHE_KEY`` nothing is used whose signature does not verify.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchshim import config
from torchshim.cache import leases
from torchshim.cache import manifest as manifests
from torchshim.cache.directory import TAG, StoreDirectory
from torchshim.cache.files import (
    LockTimeout,
    UnsafePath,
    atomic_write,
    copy_entry_files,
    file_lock,
    fsync_tree,
    link_tree,
    make_dir_at,
    parents_at,
    read_file_at,
    remove_tree_at,
    sha256_file,
    tree_files,
)
from torchshim.cache.manifest import MANIFEST, STORE_FORMAT
from torchshim.errors import CacheCorruptionError, CacheDirError, CacheLockTimeout

__all__ = ["MANIFEST", "STORE_FORMAT", "TAG", "CacheStore", "EntryInfo", "EntryWriter"]

log = logging.getLogger(__name__)

#: How often an entry's last-use time is refreshed (Go's build cache does the same: cheap LRU).
USE_TIME_GRANULARITY_S = 3600.0
#: The "problem" of an entry that is not there: a plain miss.
MISSING = "it is missing"
#: ``stats.jsonl`` is folded into one line per event when it grows past this.
STATS_COMPACT_BYTES = 256 << 10


def valid_entry_id(entry_id: object) -> bool:
    return (
        isinstance(entry_id, str)
        and 2 < len(entry_id) <= 128
        and all(c in "0123456789abcdef" for c in entry_id)
    )


@dataclass
class EntryInfo:
    """One entry as the operator's tools see it."""

    id: str
    path: Path
    size: int
    last_used: float
    manifest: dict[str, Any] | None
    problem: str | None = None

    @property
    def meta(self) -> dict[str, Any]:
        meta = (self.manifest or {}).get("meta")
        return meta if isinstance(meta, dict) else {}


@dataclass
class EntryWriter:
    """A staging directory for one entry; :meth:`commit` publishes it."""

    store: CacheStore
    entry_id: str
    path: Path
    key: str
    committed: bool = False
    kept_existing: bool = False
    #: keep :attr:`path` until the store closes (the compiled kernels run from there and write
    #: their tuning results there: :meth:`CacheStore.amend`); else it is what gets published
    keep: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def commit(self, meta: Mapping[str, Any]) -> Path:
        """Write the manifest of everything under :attr:`path` and publish the entry. When
        another process published the same entry meanwhile, theirs is kept (both are valid)."""
        self.meta = dict(meta)
        final = self.store.publish(self)
        self.committed = True
        return final


class CacheStore(StoreDirectory):
    """A cache directory's entries: written through a staging directory and published by one
    rename, read through verified private checkouts, quarantined when bad. See
    :class:`~torchshim.cache.directory.StoreDirectory` for ``enabled``, ``writable``, ``create``
    and ``maintain``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        maintain: bool = True,
        shared: bool | None = None,
    ) -> None:
        self.strict = config.strict()
        self.counters: Counter[str] = Counter()
        #: seconds spent reading and verifying entries (checkouts)
        self.verify_seconds = 0.0
        self._checkouts: list[Path] = []
        super().__init__(root, create=create, maintain=maintain, shared=shared)
        if self.enabled:
            _open_stores.append(self)

    def count(self, event: str, entry_id: str | None = None) -> None:
        """Count an event here and, where the directory is writable, in ``stats.jsonl``."""
        self.counters[event] += 1
        if not self.writable:
            return
        line = json.dumps({"event": event, "id": entry_id, "t": time.time()})
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open("stats.jsonl", flags, self.file_mode, dir_fd=self.fd)
        except OSError:
            return  # a link or another file planted in its place: counters are advisory
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return
            # O_APPEND writes of one short line are atomic: no lock needed between processes
            os.write(fd, (line + "\n").encode())
            grown = info.st_size > STATS_COMPACT_BYTES
        except OSError:
            return
        finally:
            os.close(fd)
        if grown:
            self.compact_stats()

    def entry_dir(self, entry_id: str) -> Path:
        if not valid_entry_id(entry_id):
            raise ValueError(f"not an entry id: {entry_id!r}")
        return self.root / "entries" / entry_id[:2] / entry_id

    def _entry_parts(self, entry_id: str) -> tuple[str, str, str]:
        self.entry_dir(entry_id)  # validates the id
        return ("entries", entry_id[:2], entry_id)

    # -- locks --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, entry_id: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the entry's lock (one compiler at a time; others wait, then load). The lock is an
        ``flock``: the kernel releases it when its holder dies, so a crash never blocks others.
        :class:`CacheLockTimeout` after ``timeout`` seconds (default ``TORCHSHIM_LOCK_TIMEOUT``)
        or when the lock file is not a plain file of this store."""
        if not self.writable:
            yield
            return
        wait = config.lock_timeout() if timeout is None else timeout
        path = self.root / "locks" / f"{self.entry_dir(entry_id).name}.lock"
        with self._held_lock(path, wait, f"cache entry {entry_id}"):
            yield

    @contextlib.contextmanager
    def _held_lock(self, path: Path, wait: float, what: str) -> Iterator[None]:
        """The ``flock`` on ``locks/<name>``, opened through the verified ``locks/`` descriptor.
        Anything that prevents taking it is a :class:`CacheLockTimeout` (the caller compiles
        without the cache); errors of the block itself pass through as they are."""
        held = contextlib.ExitStack()
        try:
            with self._opened("locks") as locks_fd:
                if locks_fd is None:
                    raise FileNotFoundError(errno.ENOENT, "locks/ is missing", str(path.parent))
                held.enter_context(file_lock(path, wait, self.file_mode, dir_fd=locks_fd))
        except LockTimeout as exc:
            raise CacheLockTimeout(
                f"waited {wait:.0f} s for the lock of {what} ({path}); another process is "
                "compiling it. Raise TORCHSHIM_LOCK_TIMEOUT or try again."
            ) from exc
        except (OSError, CacheDirError) as exc:
            raise CacheLockTimeout(f"cannot take the lock of {what} ({path}): {exc}") from exc
        with held:
            yield

    # -- writing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, entry_id: str, key: str) -> Iterator[EntryWriter]:
        """A staging directory for entry ``entry_id``; removed unless committed."""
        self.entry_dir(entry_id)  # validates the id
        if not self.writable:
            raise CacheDirError(f"cache directory {self.root} is not writable")
        staging = self._temp_dir("stage")
        writer = EntryWriter(self, entry_id, staging, key)
        try:
            yield writer
        finally:
            if writer.committed and writer.keep:
                self._checkouts.append(staging)  # leased until close, like a checkout
            else:
                leases.release(staging)
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, writer: EntryWriter) -> Path:
        staging = writer.path
        files: dict[str, dict[str, Any]] = {}
        for path in tree_files(staging):
            rel = path.relative_to(staging).as_posix()
            if rel == MANIFEST:
                continue
            digest, size = sha256_file(path)
            files[rel] = {"sha256": digest, "size": size}
        manifest = manifests.build(writer.entry_id, writer.key, writer.meta, files, self.key)
        fsync_tree(staging)
        atomic_write(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        if self.shared:
            source = self._copy_into_store(staging, list(files))
            if not writer.keep:
                shutil.rmtree(staging, ignore_errors=True)
        elif writer.keep:  # a linked copy in tmp/ is renamed into place
            source = f"publish-{uuid.uuid4().hex}"
            link_tree(staging, self.root / "tmp" / source)
        else:
            source = staging.name  # already in tmp/
        try:
            self._rename_into_place(writer, source)
        finally:
            with contextlib.suppress(OSError, CacheDirError), self._opened("tmp") as tmp_fd:
                if tmp_fd is not None:
                    remove_tree_at(tmp_fd, source)  # what was not renamed (kept theirs)
        self.count("put", writer.entry_id)
        return self.entry_dir(writer.entry_id)

    def _copy_into_store(self, staging: Path, names: list[str]) -> str:
        """A shared store's copy of a privately staged entry, in ``tmp/``: written while the
        directory is private to this user (0700), then made group-readable, every file and
        directory created exclusively through descriptors (a link another member swaps in is
        refused, never followed). Readers verify every file against the (signed) manifest
        anyway. The name of the copy inside ``tmp/``."""
        name = f"stage-{uuid.uuid4().hex}"
        with self._opened("tmp") as tmp_fd:
            if tmp_fd is None:
                raise CacheDirError(f"{self.root / 'tmp'} is missing")
            stage_fd = make_dir_at(tmp_fd, name, 0o700)
            leases.hold(self.root / "tmp" / name)
            try:
                for rel in [*names, MANIFEST]:
                    with parents_at(stage_fd, rel, self.dir_mode) as (parent, file_name):
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        out = os.open(file_name, flags, 0o640, dir_fd=parent)
                        try:
                            os.fchmod(out, 0o640)
                            with open(staging / rel, "rb") as source:
                                while chunk := source.read(1 << 20):
                                    os.write(out, chunk)
                            os.fsync(out)
                        finally:
                            os.close(out)
                os.fchmod(stage_fd, self.dir_mode)
                os.fsync(stage_fd)
            finally:
                os.close(stage_fd)
                leases.release(self.root / "tmp" / name)
        return name

    def _rename_into_place(self, writer: EntryWriter, source: str) -> None:
        """Rename ``tmp/<source>`` to the entry's place, both sides reached through verified
        descriptors. Another publisher's valid entry there is kept; a bad one is quarantined
        and replaced."""
        entry_id = writer.entry_id
        _, parent, name = self._entry_parts(entry_id)
        with self._opened("entries") as entries_fd:
            if entries_fd is None:
                raise CacheDirError(f"{self.root / 'entries'} is missing")
            os.close(make_dir_at(entries_fd, parent, self.dir_mode))
        with self._opened("tmp") as tmp_fd, self._opened("entries", parent) as parent_fd:
            if parent_fd is None or tmp_fd is None:
                raise CacheDirError(f"{self.root / 'entries' / parent} vanished")
            for _attempt in range(2):
                try:
                    os.rename(source, name, src_dir_fd=tmp_fd, dst_dir_fd=parent_fd)
                except OSError as exc:
                    if exc.errno not in (
                        errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR
                    ):  # fmt: skip
                        raise
                    _, problem = self._manifest_of(entry_id, {}, None)
                    if problem is None:  # another process published it first: keep theirs
                        writer.kept_existing = True
                        break
                    if not self._quarantine(entry_id, problem):
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=parent_fd)  # a file or link in its place
                    continue
                with contextlib.suppress(OSError):
                    os.fsync(parent_fd)
                break

    # -- machine facts ------------------------------------------------------------------------
    def read_probes(self, fingerprint: str) -> dict[str, bool]:
        from torchshim.cache.probes import read_probes

        return read_probes(self, fingerprint)

    def write_probes(self, fingerprint: str, results: Mapping[str, bool]) -> None:
        from torchshim.cache.probes import write_probes

        write_probes(self, fingerprint, results)

    def read_facts(self, fingerprint: str) -> dict[str, str]:
        from torchshim.cache.probes import read_facts

        return read_facts(self, fingerprint)

    def write_facts(self, fingerprint: str, facts: Mapping[str, str]) -> None:
        from torchshim.cache.probes import write_facts

        write_facts(self, fingerprint, facts)

    # -- reading ------------------------------------------------------------------------------
    def _manifest_of(
        self, entry_id: str, expect: Mapping[str, Any], key: str | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The entry's manifest, or why it cannot be trusted (:data:`MISSING` when there is no
        entry; files are not hashed here)."""
        try:
            with self._opened(*self._entry_parts(entry_id)) as fd:
                if fd is None:
                    return None, MISSING
                return self._manifest_at(fd, entry_id, expect, key)
        except UnsafePath as exc:
            return None, f"its directory is unusable ({exc})"

    def _manifest_at(
        self, fd: int, entry_id: str, expect: Mapping[str, Any], key: str | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """:meth:`_manifest_of` for the entry directory open at ``fd``."""
        try:
            data = read_file_at(fd, MANIFEST, manifests.MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            return None, "its manifest is missing"
        except UnsafePath as exc:
            return None, f"its manifest is not a plain file ({exc})"
        except OSError as exc:
            return None, f"its manifest is unreadable ({exc.strerror or exc})"
        return manifests.parse(data, entry_id, expect, self.key, key)

    def exists(self, entry_id: str) -> bool:
        """Whether the entry is present (not whether it is valid)."""
        try:
            with self._opened(*self._entry_parts(entry_id)) as fd:
                return fd is not None
        except (OSError, CacheDirError):
            return False

    def read_manifest(
        self, entry_id: str, expect: Mapping[str, Any], key: str | None = None
    ) -> dict[str, Any] | None:
        """The manifest of a present, trustworthy entry, else ``None`` (a miss; a bad one is
        quarantined). ``key``: the cache key it must have been written for. Files are verified
        by :meth:`checkout`."""
        if not self.enabled:
            return None
        manifest, problem = self._manifest_of(entry_id, expect, key)
        if problem == MISSING:
            self.count("miss", entry_id)
            return None
        if problem is not None:
            self._bad_or_gone(entry_id, problem)
            return None
        return manifest

    def _bad_or_gone(self, entry_id: str, problem: str) -> None:
        """A problem found while the entry was being removed (prune, another quarantine) is a
        plain miss, not damage."""
        if self.exists(entry_id):
            self._bad(entry_id, problem)
        else:
            self.count("miss", entry_id)

    def checkout(
        self, entry_id: str, expect: Mapping[str, Any], key: str | None = None
    ) -> Path | None:
        """A private, verified copy of the entry (removed at :meth:`close`), or ``None``."""
        started = time.perf_counter()
        try:
            return self._checkout(entry_id, expect, key)
        finally:
            self.verify_seconds += time.perf_counter() - started

    def _checkout(self, entry_id: str, expect: Mapping[str, Any], key: str | None) -> Path | None:
        if not self.enabled:
            return None
        scratch: Path | None = None
        try:
            # the manifest and every file it lists, read through one descriptor of the entry
            with self._opened(*self._entry_parts(entry_id)) as fd:
                if fd is None:
                    self.count("miss", entry_id)
                    return None
                manifest, problem = self._manifest_at(fd, entry_id, expect, key)
                if manifest is not None:
                    scratch = self._temp_dir("checkout")
                    problem = copy_entry_files(fd, manifest["files"], scratch, not self.shared)
        except UnsafePath as exc:
            problem = f"its directory is unusable ({exc})"
        if problem is not None:
            if scratch is not None:
                leases.release(scratch)
                shutil.rmtree(scratch, ignore_errors=True)
            self._bad_or_gone(entry_id, problem)
            return None
        if scratch is None:  # pragma: no cover - a manifest without a problem has a copy
            return None
        self._checkouts.append(scratch)
        self.count("hit", entry_id)
        self.touch(entry_id)
        return scratch

    def amend(self, entry_id: str, source: Path, names: Sequence[str]) -> int:
        """Add the files ``names`` (relative to ``source``) the entry does not list yet, with a
        new manifest; the number added, 0 (never an error) when none (see :mod:`.amend`)."""
        from torchshim.cache.amend import amend_entry

        return amend_entry(self, entry_id, source, names)

    def touch(self, entry_id: str) -> None:
        """Refresh the entry's last-use time, at most once per hour (cheap LRU for prune)."""
        if not self.writable:
            return
        with (
            contextlib.suppress(OSError, CacheDirError),
            self._opened("entries", entry_id[:2]) as fd,
        ):
            if fd is None:
                return
            info = os.stat(entry_id, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) and time.time() - info.st_mtime > USE_TIME_GRANULARITY_S:
                os.utime(entry_id, dir_fd=fd, follow_symlinks=False)

    def _bad(self, entry_id: str, problem: str) -> None:
        message = (
            f"torchshim: cache entry {entry_id} in {self.root} is unusable: {problem}. Treating it "
            "as a miss (it will be recompiled)"
        )
        if self.strict:
            raise CacheCorruptionError(
                message + "; raised because TORCHSHIM_STRICT=1. Run `torchshim cache verify` to "
                "find and quarantine bad entries."
            )
        self.count("corrupt", entry_id)
        if manifests.is_signature_problem(problem):
            # intact, but unsigned or signed with another key (another writer's, maybe): a miss
            # here, left in place; a publish of this entry replaces it, `cache verify
            # --quarantine-unsigned` moves it aside
            self._warn_once(f"bad:{self.root}:{entry_id}", message + "; left in place.")
            return
        moved = self._quarantine(entry_id, problem)
        where = f"; moved to {moved}" if moved else ""
        self._warn_once(f"bad:{self.root}:{entry_id}", message + where + ".")

    def _move_entry(self, entry_id: str, place: str, name: str) -> bool:
        """Rename the entry to ``<place>/<name>`` (``quarantine``, ``tmp``), both sides reached
        through verified descriptors; ``False`` when it is gone or cannot be moved."""
        try:
            with (
                self._opened("entries", entry_id[:2]) as parent_fd,
                self._opened(place) as target_fd,
            ):
                if parent_fd is None or target_fd is None:
                    return False
                os.rename(entry_id, name, src_dir_fd=parent_fd, dst_dir_fd=target_fd)
        except (OSError, CacheDirError):
            return False  # gone already (another process moved it) or not movable
        return True

    def _quarantine(self, entry_id: str, problem: str) -> Path | None:
        """Move the entry to ``quarantine/`` with a note of why; never through a link."""
        if not self.writable:
            return None
        name = f"{entry_id}-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        if not self._move_entry(entry_id, "quarantine", name):
            return None
        with contextlib.suppress(OSError, CacheDirError), self._opened("quarantine", name) as moved:
            if moved is not None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                note = os.open("QUARANTINED.txt", flags, 0o644, dir_fd=moved)
                try:
                    os.write(note, (problem + "\n").encode())
                finally:
                    os.close(note)
        self.count("quarantined", entry_id)
        return self.root / "quarantine" / name

    # -- housekeeping --------------------------------------------------------------------------
    def detach(self, path: Path) -> bool:
        """Hand a checkout or kept staging directory to the caller (who releases its lease and
        removes it): it outlives :meth:`close`. ``False`` when it is not one of them."""
        if path not in self._checkouts:
            return False
        self._checkouts.remove(path)
        return True

    def close(self) -> None:
        """Remove this process's checkouts (the modules loaded from them stay loaded)."""
        for path in self._checkouts:
            leases.release(path)
            shutil.rmtree(path, ignore_errors=True)
        self._checkouts.clear()
        super().close()
        with contextlib.suppress(ValueError):
            _open_stores.remove(self)

    # -- the operator's view (see ``maintenance``) ------------------------------------------------
    def entries(self) -> list[EntryInfo]:
        from torchshim.cache.maintenance import list_entries

        return list_entries(self)

    def verify(self, entry: EntryInfo) -> str | None:
        from torchshim.cache.maintenance import verify_entry

        return verify_entry(self, entry)

    def verify_all(self, quarantine_unsigned: bool = False) -> list[tuple[str, str]]:
        from torchshim.cache.maintenance import verify_all

        return verify_all(self, quarantine_unsigned)

    def remove(self, entry_id: str) -> bool:
        from torchshim.cache.maintenance import remove_entry

        return remove_entry(self, entry_id)

    def prune(self, max_size: int | None = None, older_than: float | None = None) -> list[str]:
        from torchshim.cache.maintenance import prune

        return prune(self, max_size, older_than)

    def clear(self) -> int:
        from torchshim.cache.maintenance import clear

        return clear(self)

    def stats(self) -> Counter[str]:
        from torchshim.cache.maintenance import read_stats

        return read_stats(self)

    def compact_stats(self) -> None:
        from torchshim.cache.maintenance import compact_stats

        compact_stats(self)

    def stats_lock(self) -> contextlib.AbstractContextManager[None]:
        """The store-wide lock of ``stats.jsonl`` compaction (:class:`CacheLockTimeout`)."""
        return self._held_lock(self.root / "locks" / "stats.lock", 30, "the counters")


_open_stores: list[CacheStore] = []


@atexit.register
def _close_all() -> None:  # pragma: no cover - process exit
    for store in _open_stores:
        store.close()
