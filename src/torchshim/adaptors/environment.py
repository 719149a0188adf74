"""The process-wide location of Inductor's and Triton's own caches while an adaptor holds a cache."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from torchshim._patching import patch_environ
from torchshim.errors import (
    AdaptorConfigError,
)
from torchshim.shims import active

__all__ = ["CacheEnvironment"]


class CacheEnvironment:
    """Points Inductor's and Triton's caches inside one base directory, process-wide, for as long
    as an adaptor holds it. Reference-counted; restored when the last holder closes."""

    _lock = threading.Lock()
    _base: Path | None = None
    _holders = 0
    _stack: contextlib.ExitStack | None = None

    @classmethod
    def acquire(cls, base: Path, kernels: Path) -> None:
        with cls._lock:
            if cls._holders and cls._base != base:
                raise AdaptorConfigError(
                    f"another adaptor holds the cache base {cls._base}; Inductor's cache location "
                    f"is process-wide, so {base} cannot be used at the same time. Close the other "
                    "adaptor first, or give both the same base directory (cache_dir + prefix)."
                )
            if cls._holders == 0:
                stack = contextlib.ExitStack()
                stack.enter_context(
                    patch_environ(active().module.kernel_cache_environment(str(kernels)))
                )
                cls._stack, cls._base = stack, base
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            if cls._holders == 0:
                return
            cls._holders -= 1
            if cls._holders == 0 and cls._stack is not None:
                cls._stack.close()
                cls._stack, cls._base = None, None
