"""Machine facts Inductor probes for or computes once per process (the CPU vector ISA, torch's
source hash), answered from where torchshim recorded them."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from torchshim.cache import CacheStore, default_cache_dir
from torchshim.errors import (
    CacheDirError,
)
from torchshim.shims import active

__all__ = ["machine_probes", "torch_source_key", "warm_up"]

log = logging.getLogger(__name__)


_machine_store_lock = threading.Lock()
_machine_stores: dict[Path, CacheStore | None] = {}
#: probe answers known in this process, per (fingerprint, store roots)
_probe_memo: dict[tuple[str, tuple[Path, ...]], dict[str, bool]] = {}


def _machine_store() -> CacheStore | None:
    """The user's own torchshim cache directory, where machine facts (probe answers) are shared
    by every cache directory on the machine; ``None`` where it cannot be used."""
    root = default_cache_dir().expanduser().absolute()
    with _machine_store_lock:
        if root not in _machine_stores:
            try:
                _machine_stores[root] = CacheStore(root, shared=False)  # the user's own
            except (CacheDirError, OSError) as exc:
                log.debug("no machine-wide probe record in %s: %s", root, exc)
                _machine_stores[root] = None
        return _machine_stores[root]


@contextlib.contextmanager
def machine_probes(store: CacheStore | None = None) -> Iterator[None]:
    """Answer Inductor's one-time machine probes in the block (the CPU vector-ISA check, which
    builds and loads test programs: 5-30 s in a fresh process) from where torchshim recorded
    them, ``store`` and the user's torchshim cache directory, and record the answers it had to
    find there. Keyed by torch build, C++ compiler and CPU."""
    stores = [s for s in (store, _machine_store()) if s is not None and s.enabled]
    if len(stores) == 2 and stores[0].root == stores[1].root:
        del stores[1]
    if not stores:
        yield
        return
    shim = active().module
    try:
        fingerprint = shim.cpu_probe_fingerprint()
    except Exception as exc:  # no C++ compiler, an unreadable /proc: Inductor probes as it would
        log.debug("CPU probe answers not recorded: %s: %s", type(exc).__name__, exc)
        yield
        return
    memo_key = (fingerprint, tuple(each.root for each in stores))
    known = _probe_memo.get(memo_key)
    if known is None:  # once per process and set of stores: compiles and loads are many
        records = [each.read_probes(fingerprint) for each in stores]
        known = {}
        for record in reversed(records):  # the given store's record wins
            known.update(record)
        for each, record in zip(stores, records, strict=True):
            if known and record != known:  # share what one store knows with the other
                each.write_probes(fingerprint, known)
        _probe_memo[memo_key] = known
    with shim.cpu_probe_results(known) as found:
        yield
    if found:
        known = _probe_memo[memo_key] = {**known, **found}
        for each in stores:
            each.write_probes(fingerprint, known)


def warm_up(store: CacheStore | None = None) -> None:
    """Pay Inductor's one-time start-up in this process now (the CPU vector-ISA probe), answered
    from torchshim's probe record where it has one; see :func:`machine_probes`."""
    with machine_probes(store):
        active().module.warm_up_cpu()


_torch_key_lock = threading.Lock()
_torch_key: list[str] = []  # this process's answer, once known


def torch_source_key() -> str:
    """torch's source hash (Inductor's ``torch_key``, a cache-key factor of every compile), as
    hex. Computing it reads and hashes every module of torch (0.15-0.25 s, once per process); it
    is recorded in the user's torchshim cache directory keyed by the torch build and the path,
    size, inode and modification and change times of every file it reads, so that a later
    process stats the files instead, and fills torch's own cache of it with the answer where the
    series allows (2.8+). A file written in any way changes the fingerprint: the hash is computed
    again. The record never stands in the way: a store that cannot be used, or a record that is
    not a SHA-256, is as if there were none."""
    with _torch_key_lock:
        if _torch_key:
            return _torch_key[0]
        shim = active().module
        store: CacheStore | None = None
        fingerprint = known = None
        try:
            fingerprint = shim.torch_source_fingerprint()
            store = _machine_store()
            if store is not None and store.enabled:
                known = store.read_facts(fingerprint).get("torch_key")
        except Exception as exc:  # an unreadable tree, an unusable cache directory
            log.debug("torch's source hash not read from a record: %s: %s", type(exc).__name__, exc)
        if known is not None and not re.fullmatch(r"[0-9a-f]{64}", known):
            known = None  # not a SHA-256 hex digest: damaged
        value = shim.torch_source_key(known)
        if store is not None and store.enabled and fingerprint is not None and value != known:
            try:
                # recorded only if no file changed while torch hashed them
                if shim.torch_source_fingerprint() == fingerprint:
                    store.write_facts(fingerprint, {"torch_key": value})
            except Exception as exc:
                log.debug("torch's source hash not recorded: %s: %s", type(exc).__name__, exc)
        _torch_key.append(value)
        return value
