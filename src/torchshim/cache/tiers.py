"""A cache store with a remote tier behind it: the local directory first, the remote tier (see
``remote``) on a local miss, and a compile lease so that a fleet compiles each entry once.

* **Read.** A local miss looks the entry up remotely. The remote entry is untrusted input: its
  manifest is parsed as a local one is (format, id, key, build, and the signature when
  ``TORCHSHIM_CACHE_KEY`` is set), every file is streamed into a private staging directory while
  its size and SHA-256 are checked, and only an entry whose every file verified is published
  locally, through the store's own writer (so it is re-hashed and signed like a local compile).
  Then the local read goes on as before: callers do not change.
* **Write.** A publish goes to the local directory, then to the remote tier; a remote failure is
  a warning, never a failed compile.
* **Compile once.** :meth:`TieredStore.lock` holds the local lock and, when the entry is in
  neither tier, the entry's remote lease. A host that does not get the lease polls (with backoff)
  until the entry appears (it then loads it), the lease expires (a holder that died: it takes the
  lease and compiles) or ``TORCHSHIM_LOCK_TIMEOUT`` passes (:class:`CacheLockTimeout`: the caller
  compiles without the cache, with a warning).
* **Faults.** Whatever the remote tier does (unreachable, slow, restarted empty, full, a value
  corrupted, truncated or signed with another key) is a remote miss with one warning; nothing of
  it is published locally, nothing local is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torchshim import config
from torchshim.cache import manifest as manifests
from torchshim.cache.files import read_file_at
from torchshim.cache.manifest import MANIFEST
from torchshim.cache.remote import RemoteTier, tier_for
from torchshim.cache.store import CacheStore, EntryWriter
from torchshim.errors import CacheLockTimeout, RemoteTierError

__all__ = ["TieredStore", "remote_from_environment"]

log = logging.getLogger(__name__)

#: Polling of a waiting host: first delay, growth, longest delay (seconds).
POLL_FIRST_S = 0.05
POLL_GROWTH = 1.5
POLL_MAX_S = 1.0


def remote_from_environment(url: str | None = None) -> RemoteTier | None:
    """The tier for ``url`` (``None``: ``TORCHSHIM_REMOTE``; ``""``: none)."""
    return tier_for(config.remote() if url is None else url)


class TieredStore(CacheStore):
    """A :class:`CacheStore` whose misses are looked up in ``remote`` and whose publishes go
    there too; with ``remote=None`` it is exactly a local store."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        remote: RemoteTier | None = None,
        create: bool = True,
        maintain: bool = True,
        shared: bool | None = None,
    ) -> None:
        self.remote = remote
        self._pulling: set[str] = set()
        super().__init__(root, create=create, maintain=maintain, shared=shared)
        if remote is not None and self.key is None and self.enabled:
            self._warn_once(
                f"unsigned-remote:{remote.name}",
                f"torchshim: the remote tier {remote.name} is used and TORCHSHIM_CACHE_KEY is not "
                "set: whoever can write to it can have code run here. Set TORCHSHIM_CACHE_KEY, "
                "a secret shared by the hosts.",
            )

    # -- reading --------------------------------------------------------------------------------
    def read_manifest(
        self, entry_id: str, expect: Mapping[str, Any], key: str | None = None
    ) -> dict[str, Any] | None:
        self._pull_if_missing(entry_id, expect, key)
        return super().read_manifest(entry_id, expect, key)

    def _checkout(self, entry_id: str, expect: Mapping[str, Any], key: str | None) -> Path | None:
        self._pull_if_missing(entry_id, expect, key)
        return super()._checkout(entry_id, expect, key)

    def _pull_if_missing(self, entry_id: str, expect: Mapping[str, Any], key: str | None) -> None:
        if self.remote is None or not self.enabled or not self.writable or self.exists(entry_id):
            return
        self.pull(entry_id, expect, key)

    def pull(self, entry_id: str, expect: Mapping[str, Any], key: str | None = None) -> bool:
        """Fetch the entry from the remote tier, verify it whole, publish it here; whether it was
        published. Every problem is a remote miss (one warning per entry)."""
        remote = self.remote
        if remote is None:
            return False
        try:
            fetched = remote.fetch(entry_id)
        except RemoteTierError:
            self.count("remote_miss", entry_id)
            return False
        if fetched is None:
            self.count("remote_miss", entry_id)
            with contextlib.suppress(RemoteTierError):
                remote.count("miss")
            return False
        manifest, problem = manifests.parse(fetched.manifest, entry_id, expect, self.key, key)
        if manifest is None or problem is not None:
            self._remote_bad(entry_id, problem or "its manifest is unreadable")
            return False
        self._pulling.add(entry_id)
        try:
            with self.writer(entry_id, str(manifest["key"])) as writer:
                for rel, record in sorted(manifest["files"].items()):
                    problem = _receive(fetched.read, record, writer.path / rel)
                    if problem is not None:
                        self._remote_bad(entry_id, f"its file {rel} {problem}")
                        return False
                writer.commit(manifest["meta"])
        except OSError as exc:  # no room here: the remote entry is fine, this disk is not
            log.warning(
                "torchshim: cannot store remote entry %s in %s (%s)", entry_id, self.root, exc
            )
            return False
        finally:
            self._pulling.discard(entry_id)
        self.count("remote_hit", entry_id)
        with contextlib.suppress(RemoteTierError):
            remote.count("hit")
        return True

    def _remote_bad(self, entry_id: str, problem: str) -> None:
        name = self.remote.name if self.remote is not None else "?"
        self.count("remote_corrupt", entry_id)
        with contextlib.suppress(RemoteTierError):
            if self.remote is not None:
                self.remote.count("corrupt")
        self._warn_once(
            f"remote-bad:{name}:{entry_id}",
            f"torchshim: remote entry {entry_id} in {name} is unusable: {problem}. Treating it as "
            "a miss; nothing of it was used",
        )

    # -- writing --------------------------------------------------------------------------------
    def publish(self, writer: EntryWriter) -> Path:
        final = super().publish(writer)
        if self.remote is not None and writer.entry_id not in self._pulling:
            self.push(writer.entry_id)
        return final

    def push(self, entry_id: str) -> bool:
        """Send the local entry to the remote tier; whether it was stored there (a failure is a
        warning the tier gave)."""
        remote = self.remote
        if remote is None:
            return False
        try:
            with self._opened(*self._entry_parts(entry_id)) as fd:
                if fd is None:
                    return False
                data = read_file_at(fd, MANIFEST, manifests.MAX_MANIFEST_BYTES)
        except OSError:
            return False
        manifest, problem = manifests.parse(data, entry_id, {}, self.key)
        if manifest is None or problem is not None:
            return False
        entry = self.entry_dir(entry_id)
        files = {rel: (entry / rel, rec["sha256"]) for rel, rec in manifest["files"].items()}
        try:
            remote.put(entry_id, data, files)
        except (RemoteTierError, OSError):
            return False
        with contextlib.suppress(RemoteTierError):
            remote.count("put")
        self.count("remote_put", entry_id)
        return True

    # -- compile once ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, entry_id: str, timeout: float | None = None) -> Iterator[None]:
        wait = config.lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + wait
        with super().lock(entry_id, wait):
            if self.remote is None or not self.writable or self.exists(entry_id):
                yield
                return
            with _lease(self.remote, entry_id, deadline):
                yield


def _receive(read: Any, record: Mapping[str, Any], target: Path) -> str | None:
    """Write one remote file to ``target`` while checking its size and SHA-256; the problem."""
    size, expected = int(record["size"]), str(record["sha256"])
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    try:
        with open(target, "xb") as out:
            for chunk in read(expected, size):
                written += len(chunk)
                if written > size:
                    return "is larger than its manifest says"
                digest.update(chunk)
                out.write(chunk)
    except RemoteTierError as exc:
        return f"could not be read whole ({exc})"
    if written != size:
        return f"is truncated ({written} of {size} bytes)"
    if digest.hexdigest() != expected:
        return "does not match its SHA-256"
    return None


class _Heartbeat:
    """Renews a lease every third of its expiry until stopped."""

    def __init__(self, remote: RemoteTier, entry_id: str, token: str, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(remote, entry_id, token, every), daemon=True,
            name="torchshim-lease",
        )  # fmt: skip
        self._thread.start()

    def _run(self, remote: RemoteTier, entry_id: str, token: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not remote.renew(entry_id, token):
                    log.warning(
                        "torchshim: the compile lease of %s expired while compiling (another "
                        "host may compile it too; both results are valid)",
                        entry_id,
                    )
                    return
            except RemoteTierError:
                continue  # the tier warned; the compile goes on

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def _lease(remote: RemoteTier, entry_id: str, deadline: float) -> Iterator[None]:
    """Hold ``entry_id``'s compile lease for the block, or return (without it) once the entry is
    in the remote tier or the tier does not answer; :class:`CacheLockTimeout` at ``deadline``."""
    delay = POLL_FIRST_S
    lease_s = float(getattr(remote, "lease_s", 30.0))
    while True:
        try:
            if remote.has(entry_id):
                break  # published by another host: the caller loads it
            token = remote.acquire(entry_id)
        except RemoteTierError:
            break  # no remote tier for now: compile here, as without one
        if token is not None:
            beat = _Heartbeat(remote, entry_id, token, lease_s / 3)
            try:
                yield
            finally:
                beat.stop()
                with contextlib.suppress(RemoteTierError):
                    remote.release(entry_id, token)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise CacheLockTimeout(
                f"another host holds the compile lease of cache entry {entry_id} in "
                f"{remote.name} and did not publish it in time. Raise TORCHSHIM_LOCK_TIMEOUT or "
                "try again."
            )
        time.sleep(min(delay, left))
        delay = min(delay * POLL_GROWTH, POLL_MAX_S)
    yield
