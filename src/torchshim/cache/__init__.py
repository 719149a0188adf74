"""The cache store the adaptors and the backend keep their entries in (see ``store``), and its
remote tier (see ``tiers`` and ``remote``)."""

from __future__ import annotations

from torchshim.cache.store import MANIFEST, STORE_FORMAT, TAG, CacheStore, EntryInfo, EntryWriter
from torchshim.cache.tiers import TieredStore, remote_from_environment
from torchshim.cache.trust import default_cache_dir

__all__ = [
    "MANIFEST",
    "STORE_FORMAT",
    "TAG",
    "CacheStore",
    "EntryInfo",
    "EntryWriter",
    "TieredStore",
    "default_cache_dir",
    "remote_from_environment",
]
