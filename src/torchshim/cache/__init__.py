"""The cache store the adaptors and the backend keep their entries in (see ``store``)."""

from __future__ import annotations

from torchshim.cache.store import MANIFEST, STORE_FORMAT, TAG, CacheStore, EntryInfo, EntryWriter
from torchshim.cache.trust import default_cache_dir

__all__ = [
    "MANIFEST",
    "STORE_FORMAT",
    "TAG",
    "CacheStore",
    "EntryInfo",
    "EntryWriter",
    "default_cache_dir",
]
