"""Leases on temporaries: a staging directory or checkout is alive while its owner keeps
refreshing its modification time; one not refreshed for :data:`LEASE_S` is dead, whoever made it.

Process ids mean nothing across containers that share a volume (each has its own pid 1, 2, ...),
so a temporary's owner is never judged by the pid in its name. A daemon thread in each process
touches the temporaries the process holds every :data:`HEARTBEAT_S` seconds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

__all__ = ["HEARTBEAT_S", "LEASE_S", "expired", "hold", "release"]

#: A temporary whose modification time is older than this is abandoned.
LEASE_S = 300.0
#: How often a live temporary's lease is renewed (well inside :data:`LEASE_S`).
HEARTBEAT_S = 30.0

_held: set[Path] = set()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def _beat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _lock:
            paths = list(_held)
        for path in paths:
            with contextlib.suppress(OSError):
                os.utime(path, follow_symlinks=False)


def hold(path: Path) -> None:
    """Keep ``path``'s lease alive until :func:`release`."""
    global _thread
    with _lock:
        _held.add(path)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_beat, name="torchshim-leases", daemon=True)
            _thread.start()


def release(path: Path) -> None:
    with _lock:
        _held.discard(path)


def expired(mtime: float, now: float | None = None) -> bool:
    """Whether a temporary last renewed at ``mtime`` is abandoned."""
    return (time.time() if now is None else now) - mtime > LEASE_S
