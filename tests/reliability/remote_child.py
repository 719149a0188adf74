"""Processes the remote-tier tests start ("hosts"), each with a cache directory of its own and one
Redis: ``python remote_child.py MODE CACHE_DIR REDIS_URL [ARGS...]``. Each prints one JSON line
(or nothing, when it is killed). No torch: entries are files of known content."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from torchshim.cache import TieredStore
from torchshim.cache.remote import RedisTier

BUILD = {"build": "remote-test"}
KEY = "remote test key"


def content(entry_id: str, name: str, size: int) -> bytes:
    """The bytes every writer puts in file ``name`` of ``entry_id`` (so a reader can tell a whole
    file from a partial or foreign one)."""
    seed = hashlib.sha256(f"{entry_id}/{name}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


FILES = {"model.bin": 150_000, "code/module.py": 3_000, "empty": 0}


def write_entry(store: TieredStore, entry_id: str, files: dict[str, int] = FILES) -> None:
    with store.writer(entry_id, KEY) as writer:
        for name, size in files.items():
            path = writer.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content(entry_id, name, size))
        writer.commit(BUILD)


def check_copy(copy: Path, entry_id: str, files: dict[str, int] = FILES) -> bool:
    return all((copy / n).read_bytes() == content(entry_id, n, s) for n, s in files.items())


def race(store: TieredStore, entry_id: str, work_s: float) -> dict[str, object]:
    """What the backend does per graph: hold the entry's lock (and lease), load it if it is
    there (locally or remotely), else "compile" (sleep) and publish it."""
    with store.lock(entry_id, timeout=120):
        if store.read_manifest(entry_id, BUILD, KEY) is not None:
            copy = store.checkout(entry_id, BUILD, KEY)
            return {"did": "loaded", "whole": copy is not None and check_copy(copy, entry_id)}
        time.sleep(work_s)
        write_entry(store, entry_id)
        return {"did": "compiled", "whole": True}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    mode, cache_dir, url, *args = sys.argv[1:]
    tier = RedisTier(url)
    store = TieredStore(Path(cache_dir), remote=tier)
    if mode == "race":
        entry_id, work_s = args[0], float(args[1])
        print(json.dumps({**race(store, entry_id, work_s), "pid": os.getpid()}), flush=True)
    elif mode == "hold":  # take the lease, say so, and never let go (until SIGKILL)
        with store.lock(args[0], timeout=120):
            print(json.dumps({"held": args[0]}), flush=True)
            time.sleep(3600)
    elif mode == "publish-loop":  # publish new entries until killed
        number = 0
        while True:
            write_entry(store, f"{number:032x}", {"big.bin": int(args[0]), "small": 100})
            number += 1
    else:
        raise SystemExit(f"unknown mode {mode}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
