"""The private kernel cache of a stored compile or load, and Inductor's compile workers kept out
of it (torch 2.5 - 2.15).

:func:`private_kernel_cache` points Inductor's and Triton's caches at an entry's staging directory
or checkout for a block, so that a compile writes, and a load reads, every file it needs there.

Inductor compiles Triton kernels in a pool of worker processes: one process it starts at the
first kernel (``AsyncCompile.process_pool``, a static method cached once per process), which
starts one worker per compile thread. That process is started with the environment of the
moment, so a pool started inside the block inherited the block's directory: importing Inductor
there created ``<directory>/inductor`` again after the directory was published or removed (seen
on an H200, torch 2.11: ``matrix/GPU.md``, "Compile workers"), which left a directory in the
cache's ``tmp/`` when it came after the process's last clean-up. Each kernel compiled in the pool
is told the current directories anyway (the task carries them, 2.5 - 2.15), so the pool needs
neither.

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
from collections.abc import Callable, Iterator
from typing import Any

from torchshim._patching import patch_attr, patch_environ
from torchshim.shims._common import relocate_triton_groups, torch_ptxas_environment

__all__ = [
    "POOL_TARGET",
    "kernel_cache_environment",
    "kernels_in_process",
    "private_kernel_cache",
    "workers_started_outside",
]

#: the patched hook (also in the shims' PATCH_TARGETS and hooks.toml)
POOL_TARGET = "torch._inductor.async_compile.AsyncCompile.process_pool"


def kernel_cache_environment(directory: str) -> dict[str, str]:
    # Inductor reads TORCHINDUCTOR_CACHE_DIR and Triton TRITON_CACHE_DIR on every use (2.5 - 2.15)
    return {
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(directory, "inductor"),
        "TRITON_CACHE_DIR": os.path.join(directory, "triton"),
        **torch_ptxas_environment(),
    }


@contextlib.contextmanager
def private_kernel_cache(directory: str) -> Iterator[None]:
    # Inductor reads TORCHINDUCTOR_CACHE_DIR (and Triton TRITON_CACHE_DIR) on every use, torch
    # 2.5 - 2.15; its in-memory code caches are dropped on both sides so that everything a compile
    # needs is written into (and everything a load needs is read from) this directory.
    from torch._inductor.utils import clear_inductor_caches

    clear_inductor_caches()
    relocate_triton_groups(directory)  # an entry's copy: its kernels' groups named the original
    try:
        with (
            workers_started_outside(),
            patch_environ(kernel_cache_environment(directory)),
        ):
            yield
    finally:
        clear_inductor_caches()


@contextlib.contextmanager
def workers_started_outside() -> Iterator[None]:
    """For the block, Inductor's compile-worker pool, if the block starts it, starts with the
    cache-directory variables as they are when the block is entered."""
    from torch._inductor.async_compile import AsyncCompile

    original = AsyncCompile.__dict__.get("process_pool")
    found: Callable[[], Any] | None = getattr(original, "__func__", None)
    cache_info = getattr(found, "cache_info", None)
    if found is None or cache_info is None:  # not the cached static method this was written for
        yield
        return
    pool: Callable[[], Any] = found
    started: Callable[[], Any] = cache_info
    before = {
        name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    }

    @functools.wraps(pool)
    def process_pool() -> Any:
        if started().currsize:  # already running: nothing is started
            return pool()
        with patch_environ(before):
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
