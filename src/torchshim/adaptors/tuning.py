"""Kernel tuning results, kept with the entries whose kernels produced them.

On CUDA, Inductor tunes a kernel that has several candidate configurations at the kernel's first
call (``max_autotune``, which sized graphs get, gives most kernels several), not at compile time,
and writes the winner beside the kernel: in the directory the graph was compiled or loaded from.
An entry published before that first call does not have it, so every process that loads the
entry would tune again at its first call (about 2 s for the demo model on an H200, measured in
benchmarks/RESULTS.md). :class:`LiveDirectories` remembers, per adaptor, which entry each of those
directories belongs to and adds the results written there to the entry (``CacheStore.amend``).
:class:`PendingTuning` keeps the directories after the adaptor has closed, until the graph's
first calls have run (the backend's case)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torchshim.cache import leases
from torchshim.cache.store import CacheStore
from torchshim.shims import active

__all__ = ["LiveDirectories", "PendingTuning", "save_after_first_calls"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass
class _Live:
    entry: str
    path: Path
    #: the tuning results the directory held already (the entry's own, or tried before)
    known: set[str] = field(default_factory=set)


class LiveDirectories:
    """The directories one adaptor's graphs run from, by entry."""

    def __init__(self, items: list[_Live] | None = None) -> None:
        self._items: list[_Live] = items or []

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, entry: str, path: Path) -> None:
        known = set(active().module.tuning_result_files(str(path)))
        self._items.append(_Live(entry, path, known))

    def save(self, store: CacheStore | None) -> int:
        """Add every new tuning result to its entry in ``store``; the number of files added."""
        if store is None or not self._items or not store.writable:
            return 0
        shim = active().module
        added = 0
        for item in self._items:
            new = [n for n in shim.tuning_result_files(str(item.path)) if n not in item.known]
            if not new:
                continue
            item.known.update(new)  # tried once: a file the entry refused is not offered again
            added += store.amend(item.entry, item.path, new)
        if added:
            log.info("torchshim: added %d kernel tuning result(s) to the cache entries", added)
        return added

    def take(self) -> list[_Live]:
        items, self._items = self._items, []
        return items


class PendingTuning:
    """Directories whose kernels have not all run yet, kept (leased) after their adaptor closed;
    :meth:`save` adds what they hold to the entries, :meth:`close` saves and removes them. Closed
    at process exit at the latest."""

    _open: ClassVar[set[PendingTuning]] = set()
    #: every directory a pending tuning removed: removed again at process exit, should a late
    #: write have put it back
    _removed: ClassVar[set[Path]] = set()
    _guard = threading.Lock()

    def __init__(self, root: Path, items: list[_Live]) -> None:
        self.root = root
        self._live = LiveDirectories(items)
        self._lock = threading.Lock()
        with PendingTuning._guard:
            PendingTuning._open.add(self)

    def save(self) -> int:
        with self._lock:
            if not self._live:
                return 0
            store = CacheStore(self.root, create=False, maintain=False)
            try:
                return self._live.save(store)
            finally:
                store.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.save()
        with self._lock:
            items = self._live.take()
            for item in items:
                leases.release(item.path)
                shutil.rmtree(item.path, ignore_errors=True)
        with PendingTuning._guard:
            PendingTuning._open.discard(self)
            PendingTuning._removed.update(item.path for item in items)


def save_after_first_calls(
    variants: Mapping[K, Callable[..., Any]], pending: PendingTuning
) -> dict[K, Callable[..., Any]]:
    """``variants`` (one graph's callables by shape), each saving ``pending``'s tuning results
    after its first call returned; the last variant's first call closes ``pending``."""
    remaining = set(variants)
    lock = threading.Lock()

    def wrap(shape: K, fn: Callable[..., Any]) -> Callable[..., Any]:
        first = True

        def run(*args: Any) -> Any:
            nonlocal first
            out = fn(*args)
            if first:
                first = False
                with lock:
                    remaining.discard(shape)
                    last = not remaining
                with contextlib.suppress(Exception):  # never fails the call
                    pending.close() if last else pending.save()
            return out

        return run

    return {shape: wrap(shape, fn) for shape, fn in variants.items()}


@atexit.register
def _close_pending() -> None:  # pragma: no cover - process exit
    for pending in list(PendingTuning._open):
        pending.close()
    for path in list(PendingTuning._removed):
        shutil.rmtree(path, ignore_errors=True)
