"""Inductor's compile workers and torchshim's private kernel caches (torch 2.5 - 2.15).

Inductor compiles Triton kernels in a pool of worker processes: one process it starts at the
first kernel (``AsyncCompile.process_pool``, a static method cached once per process), which
starts one worker per compile thread. That process is started with the environment of the
moment. A stored compile or load points ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` at
an entry's staging directory or checkout (``private_kernel_cache``), so the pool inherited that
directory: importing Inductor there created ``<directory>/inductor`` again after the directory
was published or removed (seen on an H200, torch 2.11: ``matrix/GPU.md``, "Compile workers"),
which left a directory in the cache's ``tmp/`` when it came after the process's last clean-up.
Each kernel compiled in the pool is told the current directories anyway (the task carries
them, 2.5 - 2.15), so the pool needs neither.

* :func:`workers_started_outside` starts the pool, when something in the block starts it,
  under the cache directories from before the block.
* :func:`kernels_in_process` keeps a load from starting the pool at all: a load finds every
  kernel compiled in its entry, so the pool (a process importing torch, then a worker per core)
  would only take CPU time from a warm start.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torchshim._patching import patch_attr, patch_environ

__all__ = ["POOL_TARGET", "kernels_in_process", "workers_started_outside"]

#: the patched hook (also in the shims' PATCH_TARGETS and hooks.toml)
POOL_TARGET = "torch._inductor.async_compile.AsyncCompile.process_pool"

#: the variables a stored compile or load points at its own directory
CACHE_DIR_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def environment_before() -> dict[str, str | None]:
    """The cache-directory variables as they are now (``None``: unset)."""
    return {name: os.environ.get(name) for name in CACHE_DIR_VARIABLES}


@contextlib.contextmanager
def workers_started_outside(before: Mapping[str, str | None]) -> Iterator[None]:
    """For the block, Inductor's compile-worker pool, if the block starts it, starts with the
    cache-directory variables ``before`` gives instead of the block's."""
    from torch._inductor.async_compile import AsyncCompile

    original = AsyncCompile.__dict__.get("process_pool")
    found: Callable[[], Any] | None = getattr(original, "__func__", None)
    cache_info = getattr(found, "cache_info", None)
    if found is None or cache_info is None:  # not the cached static method this was written for
        yield
        return
    pool: Callable[[], Any] = found
    started: Callable[[], Any] = cache_info
    saved = dict(before)

    @functools.wraps(pool)
    def process_pool() -> Any:
        if started().currsize:  # already running: nothing is started
            return pool()
        with patch_environ(saved):
            return pool()

    with patch_attr(AsyncCompile, "process_pool", staticmethod(process_pool)):
        yield


@contextlib.contextmanager
def kernels_in_process() -> Iterator[None]:
    """For the block, Inductor compiles (finds) Triton kernels in this process: it starts no
    compile-worker pool (``compile_threads``, an Inductor config key on 2.5 - 2.15)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(compile_threads=1):
        yield
