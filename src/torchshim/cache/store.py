"""The cache store: one directory per cache key, published atomically, verified before use.

Layout under the store's root::

    torchshim-cache.json        what this directory is (format), written once
    entries/<id[:2]>/<id>/      one entry: manifest.json + the files it lists
    index.json                  summary of the entries (advisory: rebuilt when unreadable)
    quarantine/                 entries that failed verification, moved aside for inspection
    tmp/                        staging directories and verified private copies (checkouts)
    locks/                      per-entry lock files (flock: released when a process dies)
    stats.jsonl                 hit/miss/corrupt counters, one JSON line per event
    probes/                     machine facts Inductor probes for at start-up (CPU vector ISA),
                                keyed by everything they depend on

An entry is written into ``tmp/`` and becomes visible by one ``rename``, after its files and its
manifest (SHA-256 and size of every file) are on disk: a reader sees a whole entry or none, also
after a process was killed at any point of a save. A reader copies an entry's files into a private
checkout while hashing them and uses the copy only when every hash matches, so what is imported
is exactly what was verified. A bad entry is a miss: one warning, a counter, the entry moved to
``quarantine/`` (``TORCHSHIM_STRICT=1`` raises :class:`CacheCorruptionError` instead).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torchshim.cache.files import (
    LockTimeout,
    atomic_write,
    copy_hashed,
    file_lock,
    fsync_dir,
    fsync_tree,
    tree_files,
)
from torchshim.cache.trust import (
    STRICT_ENV,
    env_flag,
    sign,
    signature_verifies,
    signing_key,
    untrusted_reason,
)
from torchshim.errors import CacheCorruptionError, CacheDirError, CacheLockTimeout

__all__ = [
    "MANIFEST",
    "STORE_FORMAT",
    "CacheStore",
    "EntryInfo",
    "EntryWriter",
]

log = logging.getLogger(__name__)

#: Bumped when the layout or the manifest schema changes; entries of another format are misses.
STORE_FORMAT = 1
MANIFEST = "manifest.json"
TAG = "torchshim-cache.json"
#: How often an entry's last-use time is refreshed (Go's build cache does the same: cheap LRU).
USE_TIME_GRANULARITY_S = 3600.0
#: Temporaries of a live process are kept; those of a dead one after this many seconds.
STALE_AFTER_S = 10.0
#: Temporaries older than this are removed whoever made them.
ABANDONED_AFTER_S = 24 * 3600.0

_TEMP_KINDS = ("stage", "checkout", "trash")


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
    meta: dict[str, Any] = field(default_factory=dict)

    def commit(self, meta: Mapping[str, Any]) -> Path:
        """Write the manifest of everything under :attr:`path` and publish the entry. When
        another process published the same entry meanwhile, theirs is kept (both are valid)."""
        self.meta = dict(meta)
        final = self.store.publish(self)
        self.committed = True
        return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_owner(name: str) -> int | None:
    """The PID in a temporary's name (``stage-<pid>-<hex>``, ``.x.tmp-<pid>-<hex>``)."""
    parts = name.rsplit("-", 2)
    if len(parts) != 3:
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


class CacheStore:
    """A cache directory. ``enabled`` is False when the directory cannot be trusted (one warning,
    nothing read or written); ``writable`` is False for a read-only directory (hits load, misses
    compile in memory, nothing is written)."""

    _warned: ClassVar[set[str]] = set()
    _warned_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.strict = env_flag(STRICT_ENV)
        self.key = signing_key()
        self.counters: Counter[str] = Counter()
        self._checkouts: list[Path] = []
        self.enabled = True
        self.writable = True
        self.reason: str | None = None
        if create and not self.root.exists():
            try:
                # exist_ok: processes sharing a cache directory start together
                self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise CacheDirError(
                    f"cannot create cache directory {self.root}: {exc.strerror or exc}. Pass a "
                    "directory you can write, or create it first."
                ) from exc
        if not self.root.is_dir():
            raise CacheDirError(
                f"cache directory {self.root} does not exist or is not a directory; create it "
                "or pass another one"
            )
        reason = untrusted_reason(self.root)
        if reason is not None:
            self.enabled = self.writable = False
            self.reason = reason
            self._warn_once(
                f"untrusted:{self.root}",
                f"torchshim: not using cache directory {self.root}: {reason}. Anyone who can "
                "write a compile cache can run code as its reader. Use a directory of your own "
                "(mode 0700), or set TORCHSHIM_CACHE_SHARED=1 if this one is shared on purpose. "
                "Caching is off for this process.",
            )
            return
        _open_stores.append(self)
        self.writable = self._probe_writable()
        if not self.writable:
            self.reason = "read-only"
            log.info("cache directory %s is read-only: hits load, misses are not stored", self.root)
            return
        for sub in ("entries", "quarantine", "tmp", "locks"):
            (self.root / sub).mkdir(exist_ok=True)
        tag = self.root / TAG
        if not tag.exists():
            with contextlib.suppress(OSError):
                atomic_write(
                    tag,
                    json.dumps(
                        {"format": STORE_FORMAT, "what": "torchshim compile cache; safe to delete"}
                    ).encode(),
                )
        self.clean_stale()

    # -- helpers ------------------------------------------------------------------------------
    def _warn_once(self, token: str, message: str) -> None:
        with self._warned_lock:
            if token in self._warned:
                return
            self._warned.add(token)
        log.warning("%s", message)

    def _probe_writable(self) -> bool:
        probe = self.root / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            probe.mkdir()
        except OSError:
            return False
        with contextlib.suppress(OSError):
            probe.rmdir()
        return True

    def count(self, event: str, entry_id: str | None = None) -> None:
        """Count an event here and, where the directory is writable, in ``stats.jsonl``."""
        self.counters[event] += 1
        if not self.writable:
            return
        line = json.dumps({"event": event, "id": entry_id, "pid": os.getpid(), "t": time.time()})
        with contextlib.suppress(OSError):
            # O_APPEND writes of one short line are atomic: no lock needed between processes
            fd = os.open(self.root / "stats.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    def entry_dir(self, entry_id: str) -> Path:
        if not entry_id or any(c not in "0123456789abcdef" for c in entry_id):
            raise ValueError(f"not an entry id: {entry_id!r}")
        return self.root / "entries" / entry_id[:2] / entry_id

    def _temp_dir(self, kind: str) -> Path:
        if self.writable:
            path = self.root / "tmp" / f"{kind}-{os.getpid()}-{uuid.uuid4().hex}"
            path.mkdir(mode=0o700)
            return path
        import tempfile

        return Path(tempfile.mkdtemp(prefix=f"torchshim-{kind}-"))

    # -- locks --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, entry_id: str, timeout: float = 600.0) -> Iterator[None]:
        """Hold the entry's lock (one compiler at a time; others wait, then load). The lock is an
        ``flock``: the kernel releases it when its holder dies, so a crash never blocks others."""
        if not self.writable:
            yield
            return
        path = self.root / "locks" / f"{entry_id}.lock"
        try:
            with file_lock(path, timeout):
                yield
        except LockTimeout as exc:
            raise CacheLockTimeout(
                f"waited {timeout:.0f} s for the lock of cache entry {entry_id} ({path}); "
                "another process is compiling it. Raise TORCHSHIM_LOCK_TIMEOUT or try again."
            ) from exc

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
            if not writer.committed:
                shutil.rmtree(staging, ignore_errors=True)

    def _manifest_bytes(self, manifest: Mapping[str, Any]) -> bytes:
        body = {k: v for k, v in manifest.items() if k != "signature"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def publish(self, writer: EntryWriter) -> Path:
        staging = writer.path
        files: dict[str, dict[str, Any]] = {}
        from torchshim.cache.files import sha256_file

        for path in tree_files(staging):
            rel = path.relative_to(staging).as_posix()
            if rel == MANIFEST:
                continue
            digest, size = sha256_file(path)
            files[rel] = {"sha256": digest, "size": size}
        manifest: dict[str, Any] = {
            "format": STORE_FORMAT,
            "id": writer.entry_id,
            "key": writer.key,
            "created": time.time(),
            "meta": writer.meta,
            "files": files,
        }
        if self.key is not None:
            manifest["signature"] = sign(self.key, self._manifest_bytes(manifest))
        fsync_tree(staging)
        atomic_write(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        final = self.entry_dir(writer.entry_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
                _, problem = self._read_manifest(final, {})
                if problem is None:  # another process published it first: keep theirs
                    shutil.rmtree(staging, ignore_errors=True)
                    writer.kept_existing = True
                    break
                self._quarantine(writer.entry_id, problem)
                continue
            fsync_dir(final.parent)
            break
        self.count("put", writer.entry_id)
        self._index_update(writer.entry_id, manifest if not writer.kept_existing else None)
        return final

    # -- machine facts ------------------------------------------------------------------------
    def _probe_path(self, fingerprint: str) -> Path:
        import hashlib

        return (
            self.root / "probes" / f"{hashlib.sha256(fingerprint.encode()).hexdigest()[:32]}.json"
        )

    def read_probes(self, fingerprint: str) -> dict[str, bool]:
        """The probe answers recorded for ``fingerprint`` (empty when none, or when the record is
        unreadable, for another fingerprint, or unsigned while ``TORCHSHIM_CACHE_KEY`` is set)."""
        if not self.enabled:
            return {}
        try:
            record = json.loads(self._probe_path(fingerprint).read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
            return {}
        results = record.get("results")
        if not isinstance(results, dict):
            return {}
        if self.key is not None and not signature_verifies(
            self.key, self._manifest_bytes(record), record.get("signature")
        ):
            log.warning(
                "ignoring probe record %s: its signature does not verify",
                self._probe_path(fingerprint),
            )
            return {}
        return {str(k): bool(v) for k, v in results.items() if isinstance(v, bool)}

    def write_probes(self, fingerprint: str, results: Mapping[str, bool]) -> None:
        """Record probe answers for ``fingerprint`` (atomically; nothing where read-only)."""
        if not (self.enabled and self.writable) or not results:
            return
        record: dict[str, Any] = {"fingerprint": fingerprint, "results": dict(results)}
        if self.key is not None:
            record["signature"] = sign(self.key, self._manifest_bytes(record))
        path = self._probe_path(fingerprint)
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, json.dumps(record, sort_keys=True).encode())
        except OSError as exc:
            log.debug("could not record probe answers in %s: %s", path, exc)

    # -- reading ------------------------------------------------------------------------------
    def _read_manifest(
        self, entry: Path, expect: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The entry's manifest, or why it cannot be trusted (files are not hashed here)."""
        path = entry / MANIFEST
        try:
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None, "its manifest is missing"
        except (OSError, ValueError) as exc:
            return None, f"its manifest is unreadable ({type(exc).__name__})"
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            return None, "its manifest is malformed"
        if manifest.get("format") != STORE_FORMAT:
            return None, (
                f"it was written in cache format {manifest.get('format')!r}, this torchshim "
                f"uses {STORE_FORMAT}"
            )
        meta = manifest.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        for name, wanted in expect.items():
            if meta.get(name) != wanted:
                return None, (
                    f"it was written for {name} {meta.get(name)!r}, this process has {wanted!r} "
                    "(another torch build or configuration)"
                )
        if self.key is not None and not signature_verifies(
            self.key, self._manifest_bytes(manifest), manifest.get("signature")
        ):
            return None, "its signature does not verify with TORCHSHIM_CACHE_KEY"
        for rel in manifest["files"]:
            parts = Path(rel).parts
            if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in parts:
                return None, f"its manifest names a path outside the entry ({rel!r})"
        return manifest, None

    def exists(self, entry_id: str) -> bool:
        return (self.entry_dir(entry_id) / MANIFEST).exists()

    def read_manifest(self, entry_id: str, expect: Mapping[str, Any]) -> dict[str, Any] | None:
        """The manifest of a present, trustworthy entry, else ``None`` (a miss; a bad one is
        quarantined). Files are verified by :meth:`checkout`."""
        if not self.enabled:
            return None
        entry = self.entry_dir(entry_id)
        if not entry.exists():
            self.count("miss", entry_id)
            return None
        manifest, problem = self._read_manifest(entry, expect)
        if problem is not None:
            self._bad_or_gone(entry_id, problem)
            return None
        return manifest

    def _bad_or_gone(self, entry_id: str, problem: str) -> None:
        """A problem found while the entry was being removed (prune, another quarantine) is a
        plain miss, not damage."""
        if self.entry_dir(entry_id).exists():
            self._bad(entry_id, problem)
        else:
            self.count("miss", entry_id)

    def checkout(self, entry_id: str, expect: Mapping[str, Any]) -> Path | None:
        """A private, verified copy of the entry (removed at :meth:`close`), or ``None``."""
        manifest = self.read_manifest(entry_id, expect)
        if manifest is None:
            return None
        entry = self.entry_dir(entry_id)
        scratch = self._temp_dir("checkout")
        problem = None
        for rel, record in sorted(manifest["files"].items()):
            try:
                digest, size = copy_hashed(entry / rel, scratch / rel)
            except FileNotFoundError:
                problem = f"its file {rel} is missing"
                break
            except OSError as exc:
                problem = f"its file {rel} is unreadable ({exc.strerror or exc})"
                break
            if not isinstance(record, dict):
                problem = f"its manifest has no record for {rel}"
                break
            if size != record.get("size"):
                problem = f"its file {rel} has {size} bytes, the manifest says {record.get('size')}"
                break
            if digest != record.get("sha256"):
                problem = f"its file {rel} does not match its SHA-256"
                break
        if problem is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            self._bad_or_gone(entry_id, problem)
            return None
        self._checkouts.append(scratch)
        self.count("hit", entry_id)
        self.touch(entry_id)
        return scratch

    def touch(self, entry_id: str) -> None:
        """Refresh the entry's last-use time, at most once per hour (cheap LRU for prune)."""
        if not self.writable:
            return
        entry = self.entry_dir(entry_id)
        with contextlib.suppress(OSError):
            if time.time() - entry.stat().st_mtime > USE_TIME_GRANULARITY_S:
                os.utime(entry)

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
        moved = self._quarantine(entry_id, problem)
        where = f"; moved to {moved}" if moved else ""
        self._warn_once(f"bad:{self.root}:{entry_id}", message + where + ".")

    def _quarantine(self, entry_id: str, problem: str) -> Path | None:
        if not self.writable:
            return None
        entry = self.entry_dir(entry_id)
        target = self.root / "quarantine" / f"{entry_id}-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, target)
        except OSError:
            return None  # gone already (another process moved it) or not movable
        with contextlib.suppress(OSError):
            (target / "QUARANTINED.txt").write_text(problem + "\n")
        self.count("quarantined", entry_id)
        self._index_update(entry_id, None)
        return target

    # -- housekeeping ------------------------------------------------------------------------------
    def clean_stale(self) -> list[Path]:
        """Remove temporaries that crashed or killed processes left behind."""
        removed: list[Path] = []
        now = time.time()
        candidates = list((self.root / "tmp").iterdir()) if (self.root / "tmp").is_dir() else []
        for directory in (self.root, self.root / "entries", *self._entry_parents()):
            with contextlib.suppress(OSError):
                candidates += [p for p in directory.iterdir() if p.name.startswith(".")]
        for path in candidates:
            owner = _temp_owner(path.name)
            if owner is None:
                continue
            try:
                age = now - path.lstat().st_mtime
            except OSError:
                continue
            dead = owner != os.getpid() and not _pid_alive(owner)
            if (dead and age > STALE_AFTER_S) or age > ABANDONED_AFTER_S:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
                removed.append(path)
        return removed

    def _entry_parents(self) -> list[Path]:
        entries = self.root / "entries"
        return [p for p in entries.iterdir() if p.is_dir()] if entries.is_dir() else []

    def close(self) -> None:
        """Remove this process's checkouts (the modules loaded from them stay loaded)."""
        for path in self._checkouts:
            shutil.rmtree(path, ignore_errors=True)
        self._checkouts.clear()

    # -- the operator's view --------------------------------------------------------------------
    def entries(self) -> list[EntryInfo]:
        found: list[EntryInfo] = []
        for parent in self._entry_parents():
            for entry in sorted(parent.iterdir()):
                if not entry.is_dir() or entry.name.startswith("."):
                    continue
                manifest, problem = self._read_manifest(entry, {})
                size = sum(
                    int(r.get("size", 0))
                    for r in (manifest or {}).get("files", {}).values()
                    if isinstance(r, dict)
                )
                try:
                    used = entry.stat().st_mtime
                except OSError:
                    continue
                found.append(EntryInfo(entry.name, entry, size, used, manifest, problem))
        return found

    def verify(self, entry: EntryInfo) -> str | None:
        """Hash every file of ``entry`` in place; the problem found, or ``None``."""
        from torchshim.cache.files import sha256_file

        if entry.problem is not None or entry.manifest is None:
            return entry.problem or "its manifest is unreadable"
        for rel, record in sorted(entry.manifest["files"].items()):
            try:
                digest, size = sha256_file(entry.path / rel)
            except FileNotFoundError:
                return f"its file {rel} is missing"
            except OSError as exc:
                return f"its file {rel} is unreadable ({exc.strerror or exc})"
            if size != record.get("size"):
                return f"its file {rel} has {size} bytes, the manifest says {record.get('size')}"
            if digest != record.get("sha256"):
                return f"its file {rel} does not match its SHA-256"
        return None

    def verify_all(self) -> list[tuple[str, str]]:
        """Check every entry; quarantine (where writable) and report the bad ones."""
        bad: list[tuple[str, str]] = []
        for entry in self.entries():
            problem = self.verify(entry)
            if problem is not None:
                bad.append((entry.id, problem))
                self.count("corrupt", entry.id)
                self._quarantine(entry.id, problem)
        return bad

    def remove(self, entry_id: str) -> bool:
        """Remove one entry unless another process holds its lock right now."""
        entry = self.entry_dir(entry_id)
        try:
            with self.lock(entry_id, timeout=0):
                trash = self.root / "tmp" / f"trash-{os.getpid()}-{uuid.uuid4().hex}"
                os.rename(entry, trash)
        except (CacheLockTimeout, OSError):
            return False
        shutil.rmtree(trash, ignore_errors=True)
        self._index_update(entry_id, None)
        return True

    def prune(self, max_size: int | None = None, older_than: float | None = None) -> list[str]:
        """Evict entries unused for ``older_than`` seconds, then least-recently-used ones until
        the entries take at most ``max_size`` bytes. Entries being written are skipped."""
        if not self.writable:
            raise CacheDirError(f"cache directory {self.root} is not writable; cannot prune it")
        now = time.time()
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        removed: list[str] = []
        keep: list[EntryInfo] = []
        for entry in entries:
            stale = older_than is not None and now - entry.last_used > older_than
            if stale and self.remove(entry.id):
                removed.append(entry.id)
                continue
            keep.append(entry)
        if max_size is not None:
            total = sum(e.size for e in keep)
            for entry in keep:
                if total <= max_size:
                    break
                if self.remove(entry.id):
                    removed.append(entry.id)
                    total -= entry.size
        if removed:
            self.count("pruned")
        self.compact_stats()
        return removed

    def clear(self) -> int:
        """Remove every entry, the quarantine, the index and the counters."""
        if not self.writable:
            raise CacheDirError(f"cache directory {self.root} is not writable; cannot clear it")
        count = 0
        for entry in self.entries():
            count += self.remove(entry.id)
        for path in (self.root / "quarantine").iterdir():
            shutil.rmtree(path, ignore_errors=True)
        for name in ("index.json", "stats.jsonl"):
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
        return count

    def stats(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        try:
            lines = (self.root / "stats.jsonl").read_text().splitlines()
        except OSError:
            return totals
        for line in lines:
            with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
                record = json.loads(line)
                totals[str(record["event"])] += int(record.get("n", 1))
        return totals

    def compact_stats(self) -> None:
        """Fold ``stats.jsonl`` into one line per event (prune does this; counts are kept)."""
        lock = file_lock(self.root / "locks" / "index.lock", 30)
        with contextlib.suppress(LockTimeout, OSError), lock:
            totals = self.stats()
            text = "".join(
                json.dumps({"event": event, "n": n}) + "\n" for event, n in sorted(totals.items())
            )
            atomic_write(self.root / "stats.jsonl", text.encode())

    # -- index ----------------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        """The entries' summary. An unreadable index is rebuilt from the entries (it is never
        trusted for anything but display)."""
        path = self.root / "index.json"
        try:
            data = json.loads(path.read_bytes())
            if isinstance(data, dict) and isinstance(data.get("entries"), dict):
                return data
            raise ValueError("not an index")
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            self._warn_once(
                f"index:{self.root}", f"torchshim: cache index {path} is unreadable; rebuilding it"
            )
            self.count("index_rebuilt")
        return self._rebuild_index()

    def _summary(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest.get("meta", {})
        return {
            "key": manifest.get("key"),
            "created": manifest.get("created"),
            "size": sum(int(r.get("size", 0)) for r in manifest.get("files", {}).values()),
            "adaptor": meta.get("adaptor") if isinstance(meta, dict) else None,
            "runtime_shape": meta.get("runtime_shape") if isinstance(meta, dict) else None,
        }

    def _rebuild_index(self) -> dict[str, Any]:
        data = {
            "format": STORE_FORMAT,
            "entries": {e.id: self._summary(e.manifest) for e in self.entries() if e.manifest},
        }
        if self.writable:
            with contextlib.suppress(OSError):
                atomic_write(self.root / "index.json", json.dumps(data, indent=1).encode())
        return data

    def _index_update(self, entry_id: str, manifest: Mapping[str, Any] | None) -> None:
        if not self.writable:
            return
        try:
            with file_lock(self.root / "locks" / "index.lock", 30):
                data = self.index()
                if manifest is None:
                    data["entries"].pop(entry_id, None)
                else:
                    data["entries"][entry_id] = self._summary(manifest)
                atomic_write(self.root / "index.json", json.dumps(data, indent=1).encode())
        except (LockTimeout, OSError) as exc:  # advisory: never fail a save for it
            log.debug("cache index not updated: %s", exc)


_open_stores: list[CacheStore] = []


@atexit.register
def _close_all() -> None:  # pragma: no cover - process exit
    for store in _open_stores:
        store.close()
