"""Kernel tuning results in a relocatable cache entry.

Inductor tunes a Triton kernel that has several candidate configurations (``max_autotune`` gives
most pointwise and reduction kernels several) at its first call, not at compile time, and writes
the winner as ``<kernel's directory>/<key>.best_config`` (``AutotuneCache``, torch 2.5 - 2.15;
the key depends on the kernel's file name and torch, not on the directory). A process that finds
that file runs the winner without tuning. In an entry the kernels live in ``inductor/<xx>/``, so
the results are ``inductor/<xx>/*.best_config``: :func:`tuning_result_files` lists them for the
adaptor to add to the entry after a graph's first calls.

From torch 2.8 a loaded graph's statically launched kernels come back pickled from the FX graph
cache entry (``TritonBundler.load_autotuners``), with the kernel's file name and its tuning
cache's path as they were in the compiling process: a stage directory that no longer exists,
maybe on another machine. Such a kernel would look for its tuning result there, tune again, and
write the result there (creating the directories). :func:`static_autotuners_relocated` points
them at the directory the graph is loaded from for the duration of a load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

from torchshim._patching import patch_attr

__all__ = [
    "TUNING_SUFFIX",
    "relocate_static_autotuners",
    "static_autotuners_relocated",
    "tuning_result_files",
]

#: the file name ending of Inductor's tuning results (``AutotuneCache``'s local cache, 2.5 - 2.15)
TUNING_SUFFIX = ".best_config"


def tuning_result_files(directory: str) -> list[str]:
    """The tuning results under an entry's directory, as ``inductor/<xx>/<name>.best_config``
    paths relative to it (regular files only; nothing followed through a link)."""
    root = os.path.join(directory, "inductor")
    found: list[str] = []
    with contextlib.suppress(OSError), os.scandir(root) as subdirs:
        for sub in subdirs:
            if not sub.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError), os.scandir(sub.path) as files:
                found.extend(
                    f"inductor/{sub.name}/{item.name}"
                    for item in files
                    if item.name.endswith(TUNING_SUFFIX) and item.is_file(follow_symlinks=False)
                )
    return sorted(found)


def _moved(path: str, root: str) -> str | None:
    """``path`` (``<some cache>/<xx>/<name>``) in ``root`` instead, or ``None`` where it is
    there already or has no such shape."""
    head, name = os.path.split(path)
    sub = os.path.basename(head)
    if not name or not sub or os.path.dirname(head) == root:
        return None
    return os.path.join(root, sub, name)


def relocate_static_autotuners(autotuners: Iterable[Any] | None, root: str) -> int:
    """Point each pickled autotuner (``StaticallyLaunchedAutotuner.kernel``, torch 2.8 - 2.15) at
    ``root`` (the Inductor cache directory of the load): its ``filename``, from which it finds its
    tuning result when loaded, and the path its tuning cache saves a result to (the
    ``AutotuneCache`` behind its ``save_cache_hook``, whose ``local_cache`` is ``(cache, path)``).
    The number of autotuners changed."""
    changed = 0
    for result in autotuners or ():
        kernel: Any = getattr(result, "kernel", None)
        filename = getattr(kernel, "filename", None)
        moved = _moved(filename, root) if isinstance(filename, str) else None
        if moved is not None:
            kernel.filename = moved
        hook = getattr(kernel, "save_cache_hook", None)
        cache: Any = getattr(hook, "__self__", None)
        local = getattr(cache, "local_cache", None)
        if isinstance(local, tuple) and len(local) == 2 and isinstance(local[1], str):
            saved = _moved(local[1], root)
            if saved is not None:
                cache.local_cache = (local[0], saved)
                moved = moved or saved
        changed += moved is not None
    return changed


@contextlib.contextmanager
def static_autotuners_relocated(root: str) -> Iterator[None]:
    """For the block, every statically launched autotuner a load brings back is pointed at
    ``root`` before torch registers it (``TritonBundler.load_autotuners``, a classmethod taking
    the list, torch 2.8 - 2.15)."""
    from torch._inductor.triton_bundler import TritonBundler

    original = TritonBundler.__dict__.get("load_autotuners")
    function = getattr(original, "__func__", None)
    if function is None:  # not the classmethod this was written against: leave it alone
        yield
        return

    def load_autotuners(cls: Any, static_autotuners: Any) -> Any:
        relocate_static_autotuners(static_autotuners, root)
        return function(cls, static_autotuners)

    with patch_attr(TritonBundler, "load_autotuners", classmethod(load_autotuners)):
        yield
