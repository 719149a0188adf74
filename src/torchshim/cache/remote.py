"""The remote tier: a store every host of a fleet shares, behind a small interface, and its Redis
implementation.

The local cache directory stays the first tier. The remote tier only moves bytes: it holds, per
entry, the entry's manifest (as the local store wrote and signed it) and its files, and it hands
out compile leases. It never decides what is trusted: the store that pulls an entry verifies the
manifest (signature, id, key, build) and every file's SHA-256 before it publishes anything
locally (see ``tiers``). An object store can be added by implementing :class:`RemoteTier`.

Redis layout, every key under ``torchshim:v1:f<store format>:``:

``e:<entry id>``
    the entry's index: one header line ``torchshim-remote 1 <chunk size>`` and the manifest's
    bytes. Written last, after every chunk was acknowledged: an entry is visible only when whole.
``c:<sha256>:<chunk size>:<n>``
    the n-th chunk of a file with that SHA-256 (content-addressed: entries share equal files).
    Chunks stay far below Redis's 512 MB value limit (``TORCHSHIM_REMOTE_CHUNK``, 8 MiB).
``l:<entry id>``
    the compile lease: a random token, ``SET NX PX``, renewed while the compile runs, deleted by
    its holder only (compare-and-delete in Lua); one that is not renewed expires.
``stats``
    a hash of counters every host increments: ``hit``, ``miss``, ``put``, ``corrupt``.

Entry ids already contain the adaptor's compiler hash (torch build, device, Triton, config), so two
torch builds never share an entry. Pruning is Redis's own: run it with ``maxmemory`` and
``maxmemory-policy allkeys-lru`` (a chunk evicted from under its index makes that entry a miss, never
a wrong load), and optionally ``TORCHSHIM_REMOTE_TTL``.

Faults: connect and command timeouts are bounded (``TORCHSHIM_REMOTE_TIMEOUT``, 2 s), no command is
retried, and after a connection failure the tier is skipped for :data:`BACKOFF_S` seconds (a
circuit breaker), so a dead server costs one timeout, not one per graph. Each failure kind is one
warning per outage.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torchshim import config
from torchshim.cache.manifest import STORE_FORMAT
from torchshim.errors import ConfigError, RemoteTierError

__all__ = [
    "BACKOFF_S",
    "PREFIX",
    "RedisTier",
    "RemoteEntry",
    "RemoteTier",
    "tier_for",
]

log = logging.getLogger(__name__)

PREFIX = f"torchshim:v1:f{STORE_FORMAT}:"
#: How long the tier is skipped after a connection failure (doubled per failure, up to 60 s).
BACKOFF_S = 5.0
MAX_BACKOFF_S = 60.0
#: Chunks fetched per round trip.
BATCH = 8
_HEADER = b"torchshim-remote 1 "
#: An index larger than this is not an index (a real manifest is a few KiB).
MAX_INDEX_BYTES = 16 << 20

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class RemoteEntry:
    """An entry as the remote tier holds it: the manifest's bytes (untrusted until parsed) and a
    way to read each file's bytes in chunks."""

    entry_id: str
    manifest: bytes
    tier: RemoteTier
    chunk: int

    def read(self, sha256: str, size: int) -> Iterator[bytes]:
        """The chunks of the file with this SHA-256 and size, in order; :class:`RemoteTierError`
        when one is missing or too large (evicted, truncated, tampered with)."""
        return self.tier.read_chunks(sha256, size, self.chunk)


class RemoteTier(Protocol):
    """What the store needs from a remote tier. Every method raises :class:`RemoteTierError`
    when the tier cannot answer; the store treats that as a miss."""

    #: shown in messages (without credentials)
    name: str

    def fetch(self, entry_id: str) -> RemoteEntry | None:
        """The entry, or ``None`` when the tier does not hold it."""

    def read_chunks(self, sha256: str, size: int, chunk: int) -> Iterator[bytes]:
        """A file's bytes in chunks of ``chunk`` (see :meth:`RemoteEntry.read`)."""

    def has(self, entry_id: str) -> bool:
        """Whether the tier holds the entry (its index; not whether it is whole)."""

    def put(self, entry_id: str, manifest: bytes, files: Mapping[str, tuple[Path, str]]) -> int:
        """Store the entry: ``files`` maps each name to (path, SHA-256); the manifest becomes
        visible last. The bytes sent."""

    def acquire(self, entry_id: str) -> str | None:
        """Take the entry's compile lease; its token, or ``None`` when another host holds it."""

    def renew(self, entry_id: str, token: str) -> bool:
        """Extend the lease; ``False`` when it is no longer this token's."""

    def release(self, entry_id: str, token: str) -> None:
        """Give the lease back (only if it is still this token's)."""

    def count(self, event: str, amount: int = 1) -> None:
        """Add to a counter every host shares (``hit``, ``miss``, ``put``, ``corrupt``)."""

    def stats(self) -> dict[str, int]:
        """The shared counters."""

    def entries(self) -> Iterator[tuple[str, bytes]]:
        """Every entry's id and manifest bytes."""

    def usage(self) -> dict[str, Any]:
        """What the server says about its memory: used, limit, eviction policy."""


class RedisTier:
    """:class:`RemoteTier` on Redis (see the module's docstring for the layout)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = None,
        chunk: int | None = None,
        ttl: float | None = None,
        lease: float | None = None,
        prefix: str = PREFIX,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ConfigError(
                f"the remote tier {url!r} needs the Redis client, which is not installed: "
                "pip install 'torchshim[fleet]' (or unset TORCHSHIM_REMOTE / remote=)"
            ) from None
        self._redis = redis
        self.url = url
        scheme, _, rest = url.partition("://")
        self.name = f"{scheme}://{rest.rsplit('@', maxsplit=1)[-1]}"  # no password in messages
        self.timeout = config.remote_timeout() if timeout is None else timeout
        self.chunk = config.remote_chunk() if chunk is None else chunk
        self.ttl = config.remote_ttl() if ttl is None else (ttl or None)
        self.lease_s = config.remote_lease() if lease is None else lease
        self.prefix = prefix
        try:
            self._client: Any = redis.Redis.from_url(
                url,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
            )
        except ValueError as exc:
            raise ConfigError(
                f"remote tier {self.name!r}: not a usable Redis URL ({exc})"
            ) from None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._backoff = BACKOFF_S
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisTier({self.name!r})"

    # -- calling the server ---------------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning("torchshim: remote tier %s: %s", self.name, message)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, with every failure a :class:`RemoteTierError` (warned once per kind
        and outage) and the circuit breaker applied."""
        redis = self._redis
        now = time.monotonic()
        if now < self._down_until:
            raise RemoteTierError(f"remote tier {self.name} skipped after a failure")
        try:
            result = fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, TimeoutError, OSError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self._backoff
                wait = self._backoff
                self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            slow = isinstance(exc, (redis.TimeoutError, TimeoutError))
            self._warn(
                "down",
                f"{'no answer within ' + format(self.timeout, 'g') + ' s' if slow else 'unreachable'}"
                f" ({type(exc).__name__}: {exc}) while {what}; remote misses, the local cache "
                f"and compiling go on; trying again in {wait:g} s",
            )
            raise RemoteTierError(f"remote tier {self.name}: {exc}") from exc
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith("OOM") or "used memory > 'maxmemory'" in text:
                self._warn(
                    "full",
                    f"the server is full (maxmemory reached: {text}); entries are not stored "
                    "there. Give it maxmemory-policy allkeys-lru so that it evicts instead",
                )
            elif text.startswith("LOADING"):
                self._down_until = time.monotonic() + 1.0
            else:
                self._warn(f"error:{text[:40]}", f"{what} failed: {text}")
            raise RemoteTierError(f"remote tier {self.name}: {text}") from exc
        except redis.RedisError as exc:
            self._warn(f"error:{type(exc).__name__}", f"{what} failed: {type(exc).__name__}: {exc}")
            raise RemoteTierError(f"remote tier {self.name}: {exc}") from exc
        if self._down_until or self._backoff != BACKOFF_S:
            with self._lock:
                self._down_until, self._backoff = 0.0, BACKOFF_S
                self._warned.discard("down")
            log.info("torchshim: remote tier %s answers again", self.name)
        return result

    def _ex(self) -> dict[str, Any]:
        return {"px": int(self.ttl * 1000)} if self.ttl else {}

    # -- entries --------------------------------------------------------------------------------
    def fetch(self, entry_id: str) -> RemoteEntry | None:
        data = self._call("reading an entry", self._client.get, f"{self.prefix}e:{entry_id}")
        if data is None:
            return None
        header, sep, manifest = bytes(data).partition(b"\n")
        chunk = header.removeprefix(_HEADER)
        if not sep or chunk == header or not chunk.isdigit() or len(data) > MAX_INDEX_BYTES:
            return RemoteEntry(entry_id, b"", self, 0)  # unreadable: the manifest check says so
        return RemoteEntry(entry_id, manifest, self, int(chunk))

    def _chunk_keys(self, sha256: str, size: int, chunk: int) -> list[str]:
        count = -(-size // chunk) if chunk > 0 else 0
        return [f"{self.prefix}c:{sha256}:{chunk}:{n}" for n in range(count)]

    def read_chunks(self, sha256: str, size: int, chunk: int) -> Iterator[bytes]:
        if size > 0 and chunk <= 0:
            raise RemoteTierError(f"remote tier {self.name}: an index without a chunk size")
        keys = self._chunk_keys(sha256, size, chunk)
        for start in range(0, len(keys), BATCH):
            values = self._call("reading chunks", self._client.mget, keys[start : start + BATCH])
            for value in values:
                if value is None:
                    raise RemoteTierError(
                        f"remote tier {self.name}: a chunk of file {sha256[:12]} is gone "
                        "(evicted, expired, or never finished)"
                    )
                if len(value) > chunk:
                    raise RemoteTierError(f"remote tier {self.name}: an oversized chunk")
                yield bytes(value)

    def has(self, entry_id: str) -> bool:
        return bool(self._call("looking an entry up", self._client.exists, self._key(entry_id)))

    def _key(self, entry_id: str) -> str:
        return f"{self.prefix}e:{entry_id}"

    def put(self, entry_id: str, manifest: bytes, files: Mapping[str, tuple[Path, str]]) -> int:
        sent = 0
        for _rel, (path, sha256) in sorted(files.items()):
            with open(path, "rb") as source:
                pending: list[tuple[str, bytes]] = []
                number = 0
                while True:
                    data = source.read(self.chunk)
                    if data:
                        pending.append((f"{self.prefix}c:{sha256}:{self.chunk}:{number}", data))
                        number += 1
                    if pending and (len(pending) >= BATCH or not data):
                        pipe = self._client.pipeline(transaction=False)
                        for key, value in pending:
                            pipe.set(key, value, **self._ex())
                        self._call("storing chunks", pipe.execute)
                        sent += sum(len(v) for _, v in pending)
                        pending = []
                    if not data:
                        break
        index = _HEADER + str(self.chunk).encode() + b"\n" + manifest
        self._call(
            "storing an entry", lambda: self._client.set(self._key(entry_id), index, **self._ex())
        )
        return sent + len(index)

    # -- leases ---------------------------------------------------------------------------------
    def acquire(self, entry_id: str) -> str | None:
        token = uuid.uuid4().hex
        taken = self._call(
            "taking a compile lease",
            lambda: self._client.set(
                f"{self.prefix}l:{entry_id}", token, nx=True, px=int(self.lease_s * 1000)
            ),
        )
        return token if taken else None

    def renew(self, entry_id: str, token: str) -> bool:
        kept = self._call(
            "renewing a compile lease",
            lambda: self._client.eval(
                _RENEW, 1, f"{self.prefix}l:{entry_id}", token, int(self.lease_s * 1000)
            ),
        )
        return bool(kept)

    def release(self, entry_id: str, token: str) -> None:
        self._call(
            "releasing a compile lease",
            lambda: self._client.eval(_RELEASE, 1, f"{self.prefix}l:{entry_id}", token),
        )

    # -- the operator's view --------------------------------------------------------------------
    def count(self, event: str, amount: int = 1) -> None:
        self._call("counting", self._client.hincrby, f"{self.prefix}stats", event, amount)

    def stats(self) -> dict[str, int]:
        raw = self._call("reading counters", self._client.hgetall, f"{self.prefix}stats")
        return {bytes(k).decode(): int(v) for k, v in raw.items()}

    def entries(self) -> Iterator[tuple[str, bytes]]:
        keys = self._call(
            "listing entries",
            lambda: list(self._client.scan_iter(match=f"{self.prefix}e:*", count=1000)),
        )
        for key in keys:
            entry_id = bytes(key).decode().rsplit(":", 1)[-1]
            fetched = self.fetch(entry_id)
            if fetched is not None:
                yield entry_id, fetched.manifest

    def usage(self) -> dict[str, Any]:
        memory = self._call("reading server memory", self._client.info, "memory")
        return {
            "used_bytes": int(memory.get("used_memory", 0)),
            "maxmemory": int(memory.get("maxmemory", 0)),
            "policy": str(memory.get("maxmemory_policy", "?")),
        }

    def drop(self, entry_id: str) -> None:
        """Remove the entry's index (it is a miss from now on; its chunks go by eviction)."""
        self._call("removing an entry", self._client.delete, self._key(entry_id))

    def clear(self) -> int:
        """Delete every key of this tier's prefix; how many."""
        keys = self._call(
            "listing keys",
            lambda: list(self._client.scan_iter(match=f"{self.prefix}*", count=1000)),
        )
        for start in range(0, len(keys), 500):
            self._call("deleting keys", self._client.delete, *keys[start : start + 500])
        return len(keys)


_tiers: dict[str, RedisTier] = {}
_tiers_lock = threading.Lock()


def tier_for(url: str | None) -> RedisTier | None:
    """The process's tier for ``url`` (one per URL, so its circuit breaker and warnings are
    shared by every store that uses it); ``None`` for no URL. :class:`ConfigError` for a bad URL
    or a missing client."""
    if not url:
        return None
    config.parse_remote(url)
    with _tiers_lock:
        tier = _tiers.get(url)
        if tier is None:
            tier = _tiers[url] = RedisTier(url)
        return tier
