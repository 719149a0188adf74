"""The operator's work on a store: list, verify, remove, prune, clear, counters.

Everything here reads the store as untrusted input (a stray file or directory under ``entries/``,
a manifest of the wrong shape, a link where a file belongs) and reports it rather than failing.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from torchshim.cache.files import UnsafePath, atomic_write_at, open_relative
from torchshim.cache.manifest import is_signature_problem
from torchshim.errors import CacheDirError, CacheLockTimeout

if TYPE_CHECKING:
    from torchshim.cache.store import CacheStore, EntryInfo

__all__ = [
    "clear",
    "compact_stats",
    "list_entries",
    "prune",
    "read_stats",
    "remove_entry",
    "verify_all",
    "verify_entry",
]

_STATS_LIMIT = 64 << 20


def list_entries(store: CacheStore) -> list[EntryInfo]:
    """Every entry directory under ``entries/`` with its manifest or its problem. Names that are
    not entry ids, files, and links are skipped."""
    from torchshim.cache.store import EntryInfo, valid_entry_id

    found: list[EntryInfo] = []
    if not store.enabled:
        return found
    with contextlib.suppress(OSError, CacheDirError), store._opened("entries") as entries_fd:
        if entries_fd is None:
            return found
        with os.scandir(entries_fd) as listing:
            parents = sorted(e.name for e in listing if e.is_dir(follow_symlinks=False))
        for parent in parents:
            try:
                with store._opened("entries", parent) as parent_fd:
                    if parent_fd is None:
                        continue
                    with os.scandir(parent_fd) as listing:
                        names = sorted(
                            e.name
                            for e in listing
                            if e.is_dir(follow_symlinks=False)
                            and valid_entry_id(e.name)
                            and e.name.startswith(parent)
                        )
                    for name in names:
                        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                        manifest, problem = store._manifest_of(name, {}, None)
                        size = sum(r["size"] for r in (manifest or {}).get("files", {}).values())
                        path = store.root / "entries" / parent / name
                        found.append(EntryInfo(name, path, size, info.st_mtime, manifest, problem))
            except (OSError, UnsafePath):
                continue
    return found


def verify_entry(store: CacheStore, entry: EntryInfo) -> str | None:
    """Hash every file of ``entry`` in place (never through a link); the problem, or ``None``."""
    import hashlib

    if entry.problem is not None or entry.manifest is None:
        return entry.problem or "its manifest is unreadable"
    try:
        with store._opened(*store._entry_parts(entry.id)) as fd:
            if fd is None:
                return "it vanished while being checked"
            for rel, record in sorted(entry.manifest["files"].items()):
                try:
                    file_fd = open_relative(fd, rel)
                except FileNotFoundError:
                    return f"its file {rel} is missing"
                except UnsafePath as exc:
                    return f"its file {rel} is unusable: {exc.strerror or exc}"
                try:
                    size = os.fstat(file_fd).st_size
                    if size != record["size"]:
                        return (
                            f"its file {rel} has {size} bytes, the manifest says {record['size']}"
                        )
                    digest = hashlib.sha256()
                    while chunk := os.read(file_fd, 1 << 20):
                        digest.update(chunk)
                finally:
                    os.close(file_fd)
                if digest.hexdigest() != record["sha256"]:
                    return f"its file {rel} does not match its SHA-256"
    except UnsafePath as exc:
        return f"its directory is unusable ({exc})"
    except OSError as exc:
        return f"it is unreadable ({exc.strerror or exc})"
    return None


def verify_all(store: CacheStore, quarantine_unsigned: bool = False) -> list[tuple[str, str]]:
    """Check every entry; report ``(id, problem)`` for each that would be a miss. Damaged ones are
    quarantined (where writable); intact unsigned ones while a key is set only on request."""
    bad: list[tuple[str, str]] = []
    for entry in list_entries(store):
        problem = verify_entry(store, entry)
        if problem is None:
            continue
        bad.append((entry.id, problem))
        if is_signature_problem(problem) and not quarantine_unsigned:
            continue  # intact but unsigned (or another key's): reported, moved only on request
        store.count("corrupt", entry.id)
        store._quarantine(entry.id, problem)
    return bad


def remove_entry(store: CacheStore, entry_id: str) -> bool:
    """Remove one entry unless another process holds its lock right now."""
    from torchshim.cache.files import remove_tree_at

    trash = f"trash-{uuid.uuid4().hex}"
    try:
        with store.lock(entry_id, timeout=0):
            if not store._move_entry(entry_id, "tmp", trash):
                return False
        with store._opened("tmp") as tmp_fd:
            if tmp_fd is not None:
                remove_tree_at(tmp_fd, trash)
    except (CacheLockTimeout, OSError, CacheDirError):
        return False
    return True


def prune(
    store: CacheStore, max_size: int | None = None, older_than: float | None = None
) -> list[str]:
    """Evict entries unused for ``older_than`` seconds, then least-recently-used ones until the
    entries take at most ``max_size`` bytes. Entries being written are skipped."""
    if not store.writable:
        raise CacheDirError(f"cache directory {store.root} is not writable; cannot prune it")
    now = time.time()
    entries = sorted(list_entries(store), key=lambda e: e.last_used)
    removed: list[str] = []
    keep: list[EntryInfo] = []
    for entry in entries:
        stale = older_than is not None and now - entry.last_used > older_than
        if stale and remove_entry(store, entry.id):
            removed.append(entry.id)
            continue
        keep.append(entry)
    if max_size is not None:
        total = sum(e.size for e in keep)
        for entry in keep:
            if total <= max_size:
                break
            if remove_entry(store, entry.id):
                removed.append(entry.id)
                total -= entry.size
    if removed:
        store.count("pruned")
    compact_stats(store)
    return removed


def clear(store: CacheStore) -> int:
    """Remove every entry, the quarantine and the counters."""
    from torchshim.cache.files import remove_tree_at

    if not store.writable:
        raise CacheDirError(f"cache directory {store.root} is not writable; cannot clear it")
    count = sum(remove_entry(store, entry.id) for entry in list_entries(store))
    with contextlib.suppress(OSError), store._opened("quarantine") as fd:
        if fd is not None:
            with os.scandir(fd) as listing:
                names = [e.name for e in listing]
            for name in names:
                remove_tree_at(fd, name)
    for name in ("stats.jsonl", "index.json"):
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=store.fd)
    return count


def read_stats(store: CacheStore) -> Counter[str]:
    totals: Counter[str] = Counter()
    if not store.enabled:
        return totals
    try:
        fd = open_relative(store.fd, "stats.jsonl")
    except (OSError, CacheDirError):
        return totals
    try:
        if os.fstat(fd).st_size > _STATS_LIMIT:
            return totals
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError, RecursionError):
            record = json.loads(line)
            count = record.get("n", 1)
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                totals[str(record["event"])[:64]] += count
    return totals


def compact_stats(store: CacheStore) -> None:
    """Fold ``stats.jsonl`` into one line per event (counts are kept)."""
    if not store.writable:
        return
    with contextlib.suppress(CacheLockTimeout, OSError, CacheDirError), store.stats_lock():
        totals = read_stats(store)
        text = "".join(
            json.dumps({"event": event, "n": n}) + "\n" for event, n in sorted(totals.items())
        )
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(
                os.stat("stats.jsonl", dir_fd=store.fd, follow_symlinks=False).st_mode
            ):
                return
        atomic_write_at(store.fd, "stats.jsonl", text.encode(), store.file_mode)
