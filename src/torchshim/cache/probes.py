"""Probe records: machine facts Inductor probes for at start-up (the CPU vector ISA) and facts it
computes once per process (torch's source hash), kept in a store under ``probes/``, keyed by
everything they depend on (the fingerprint).

A probe record changes what code Inductor generates, so it is trusted like an entry: in a shared
store it is used only when signed with ``TORCHSHIM_CACHE_KEY``; with a key set, an unsigned or
badly signed record is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torchshim.cache.files import UnsafePath, atomic_write_at, read_file_at
from torchshim.cache.manifest import payload
from torchshim.cache.trust import sign, signature_verifies
from torchshim.errors import CacheDirError

if TYPE_CHECKING:
    from torchshim.cache.store import CacheStore

__all__ = ["read_facts", "read_probes", "write_facts", "write_probes"]

log = logging.getLogger(__name__)

_LIMIT = 64 << 10


def _name(fingerprint: str) -> str:
    return f"{hashlib.sha256(fingerprint.encode()).hexdigest()[:32]}.json"


def _read_record(store: CacheStore, fingerprint: str) -> dict[str, Any]:
    """The results recorded for ``fingerprint``; empty when none, unreadable, for another
    fingerprint, unsigned where a signature is required, or not verifying."""
    if not store.enabled:
        return {}
    if store.shared and store.key is None:
        return {}  # anyone of the group could have written it
    try:
        with store._opened("probes") as fd:
            if fd is None:
                return {}
            record: Any = json.loads(read_file_at(fd, _name(fingerprint), _LIMIT))
    except (OSError, ValueError, UnicodeDecodeError, CacheDirError, UnsafePath, RecursionError):
        return {}
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return {}
    results = record.get("results")
    if not isinstance(results, dict):
        return {}
    if store.key is not None and not signature_verifies(
        store.key, payload(record), record.get("signature")
    ):
        log.warning("ignoring probe record %s: its signature does not verify", _name(fingerprint))
        return {}
    return {str(k): v for k, v in results.items()}


def _write_record(store: CacheStore, fingerprint: str, results: Mapping[str, Any]) -> None:
    """Record ``results`` for ``fingerprint`` (atomically; nothing where read-only or untrusted)."""
    if not (store.enabled and store.writable) or not results:
        return
    record: dict[str, Any] = {"fingerprint": fingerprint, "results": dict(results)}
    if store.key is not None:
        record["signature"] = sign(store.key, payload(record))
    path = store.root / "probes" / _name(fingerprint)
    try:
        with store._opened("probes") as fd:
            if fd is not None:
                data = json.dumps(record, sort_keys=True).encode()
                atomic_write_at(fd, path.name, data, 0o640 if store.shared else 0o600)
    except (OSError, CacheDirError) as exc:
        log.debug("could not record machine facts in %s: %s", path, exc)


def read_probes(store: CacheStore, fingerprint: str) -> dict[str, bool]:
    """The probe answers recorded for ``fingerprint`` (see :func:`_read_record`)."""
    return {k: v for k, v in _read_record(store, fingerprint).items() if isinstance(v, bool)}


def write_probes(store: CacheStore, fingerprint: str, results: Mapping[str, bool]) -> None:
    """Record probe answers for ``fingerprint``."""
    _write_record(store, fingerprint, results)


def read_facts(store: CacheStore, fingerprint: str) -> dict[str, str]:
    """The computed facts (strings) recorded for ``fingerprint``."""
    return {k: v for k, v in _read_record(store, fingerprint).items() if isinstance(v, str)}


def write_facts(store: CacheStore, fingerprint: str, facts: Mapping[str, str]) -> None:
    """Record computed facts for ``fingerprint``."""
    _write_record(store, fingerprint, facts)
