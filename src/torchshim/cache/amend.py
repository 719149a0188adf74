"""Adding files to a published entry (its kernels' tuning results, written after the entry was
published: see ``torchshim.adaptors.tuning``). Files the entry lists are never changed: a reader
may be verifying them. New files are written first, then a new manifest that lists them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchshim.cache import manifest as manifests
from torchshim.cache.files import atomic_write_at, open_dir, parents_at, read_file_at
from torchshim.cache.manifest import MANIFEST
from torchshim.errors import CacheDirError, CacheLockTimeout

if TYPE_CHECKING:
    from torchshim.cache.store import CacheStore

__all__ = ["AMEND_FILE_BYTES", "AMEND_LOCK_WAIT_S", "amend_entry"]

log = logging.getLogger(__name__)

#: The largest file :func:`amend_entry` adds (tuning results are a few hundred bytes).
AMEND_FILE_BYTES = 1 << 20
#: How long :func:`amend_entry` waits for the entry's lock before leaving it as it is.
AMEND_LOCK_WAIT_S = 2.0


def amend_entry(store: CacheStore, entry_id: str, source: Path, names: Sequence[str]) -> int:
    """See :meth:`CacheStore.amend`."""
    from torchshim.cache.store import CacheStore

    if not store.writable or not names:
        return 0
    added: dict[str, dict[str, Any]] = {}
    try:
        source_fd = open_dir(source)
    except OSError:
        return 0
    try:
        # the local lock only (a tiered store's lock would also take a remote lease)
        with (
            CacheStore.lock(store, entry_id, timeout=AMEND_LOCK_WAIT_S),
            store._opened(*store._entry_parts(entry_id)) as fd,
        ):
            if fd is None:
                return 0
            manifest, _problem = store._manifest_at(fd, entry_id, {}, None)
            if manifest is None:
                return 0
            for rel in names:
                if rel in manifest["files"] or manifests.bad_path(rel):
                    continue
                try:
                    data = read_file_at(source_fd, rel, AMEND_FILE_BYTES)
                except OSError:  # gone, not a plain file, too large: not added
                    continue
                with parents_at(fd, rel, store.dir_mode) as (parent, name):
                    atomic_write_at(parent, name, data, store.file_mode)
                added[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            if not added:
                return 0
            files = {**manifest["files"], **added}
            new = manifests.build(entry_id, manifest["key"], manifest["meta"], files, store.key)
            text = json.dumps(new, indent=1, sort_keys=True).encode()
            atomic_write_at(fd, MANIFEST, text, store.file_mode)
    except (OSError, CacheDirError, CacheLockTimeout) as exc:
        log.debug("torchshim: could not add %d file(s) to entry %s: %s", len(names), entry_id, exc)
        return 0
    finally:
        os.close(source_fd)
    store.count("amended", entry_id)
    return len(added)
