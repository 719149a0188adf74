"""Helpers shared by the shim modules. Only ``torch_source_fingerprint`` and ``torch_source_key``
import torch (inside the function); the rest is pure Python."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from torchshim._stable import stable_digest, stable_json

log = logging.getLogger(__name__)

__all__ = [
    "config_patch_existing",
    "source_tree_fingerprint",
    "stable_digest",
    "stable_json",
    "torch_source_fingerprint",
    "torch_source_key",
    "walk_module_file",
]


@contextlib.contextmanager
def config_patch_existing(config: Any, values: dict[str, Any]) -> Iterator[None]:
    """``config.patch(...)`` limited to the keys this torch has; a torch without a key simply lacks
    the feature the key would switch (the caller documents which series have which key)."""
    present = {key: val for key, val in values.items() if hasattr(config, key)}
    with config.patch(present):
        yield


def walk_module_file(fn: Any, depth: int = 3) -> str | None:
    """The file of the generated module behind Inductor's ``current_callable``.

    ``current_callable`` is a plain function up to torch 2.8 and a bound method from 2.9; the
    generated ``call`` may also sit in a closure. Returns ``None`` when no ``.py`` file is found.
    """
    seen: set[int] = set()

    def visit(obj: Any, level: int) -> str | None:
        if obj is None or id(obj) in seen or level < 0:
            return None
        seen.add(id(obj))
        target: Callable[..., Any] | Any = getattr(obj, "__func__", obj)
        code = getattr(target, "__code__", None)
        filename = getattr(code, "co_filename", None)
        if isinstance(filename, str) and filename.endswith(".py") and "/torch/" not in filename:
            return filename
        for cell in getattr(target, "__closure__", None) or ():
            with contextlib.suppress(ValueError):
                found = visit(cell.cell_contents, level - 1)
                if found:
                    return found
        return None

    return visit(fn, depth)


def source_tree_fingerprint(root: str, extra: tuple[str, ...] = ()) -> str:
    """A cheap stand-in for hashing every module under ``root`` (what Inductor's ``torch_key``
    reads, torch 2.5 - 2.15: the modules of ``root`` and of every package below it, found as
    ``pkgutil`` does) and every file of the ``extra`` directories or files: the path, size,
    inode, modification and change time of each. Any file added, removed, resized or written
    changes it (the change time cannot be set back, unlike the modification time that ``cp -p``
    or ``tar`` restore); reading it costs a ``stat`` per file instead of reading and hashing
    some 40 MB."""
    import hashlib
    import importlib.machinery

    inits = [f"__init__{suffix}" for suffix in importlib.machinery.all_suffixes()]
    digest = hashlib.sha256()

    def add(label: str, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            digest.update(f"{label}\0!{exc.errno}\n".encode())
            return
        digest.update(
            f"{label}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode()
        )

    def walk(top: str, packages_only: bool) -> None:
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                digest.update(f"!{directory}:{exc.errno}\n".encode())
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    # pkgutil descends into packages only (a directory with an __init__ module)
                    if not packages_only or any(
                        os.path.exists(os.path.join(entry.path, name)) for name in inits
                    ):
                        pending.append(entry.path)
                    continue
                add(os.path.relpath(entry.path, root), entry.path)

    walk(root, packages_only=True)
    for path in extra:
        if os.path.isdir(path):
            digest.update(f"+{path}\n".encode())
            walk(path, packages_only=False)
        else:
            add(f"+{path}", path)
    return digest.hexdigest()


def torch_source_fingerprint() -> str:
    # what torch_key reads, torch 2.5 - 2.15: torch's modules and files of Inductor's it names
    # (aoti_runtime's interface.cpp, implementation.cpp or streams.h: the whole directory; those
    # in a package directory, script.ld and 2.5's cpp_prefix.h, are stat'ed with the modules)
    import torch

    root = os.path.dirname(torch.__file__)
    inductor = os.path.join(root, "_inductor")  # its path, without importing Inductor
    extra = (os.path.join(inductor, "codegen", "aoti_runtime"), os.path.join(inductor, "script.ld"))
    from torchshim._version import installed_torch_version, torch_git_version  # the oracle

    build = f"{installed_torch_version()}\0{torch_git_version()}\0{root}\0"
    return stable_digest([build, source_tree_fingerprint(root, extra)])


def torch_source_key(known: str | None = None) -> str:
    from torch._inductor.codecache import torch_key

    # torch 2.8+ lets its cache of the source hash be filled from outside (torch_key.set);
    # where the value is already computed, or on 2.5 - 2.7, torch computes it as it would
    prime = getattr(torch_key, "set", None)
    if known is not None and prime is not None:
        try:
            prime(bytes.fromhex(known))
        except (AssertionError, RuntimeError, ValueError) as exc:  # computed in this process
            log.debug("torch_key already known in this process (%s): kept", exc)
    return str(torch_key().hex())
