"""Helpers shared by the shim modules. Pure Python: nothing here imports torch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torchshim._stable import stable_digest, stable_json

__all__ = ["config_patch_existing", "stable_digest", "stable_json", "walk_module_file"]


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
    ``pkgutil`` does, plus ``extra`` files): the path, size and modification time of every file
    in those directories. Any file added, removed, resized or rewritten changes it; reading it
    costs a ``stat`` per file instead of reading and hashing some 40 MB."""
    import hashlib
    import os

    digest = hashlib.sha256()
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            digest.update(f"!{directory}:{exc.errno}".encode())
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                # pkgutil descends into packages only (a directory with an __init__ module)
                if any(
                    os.path.exists(os.path.join(entry.path, f"__init__{suffix}"))
                    for suffix in (".py", ".pyc")
                ):
                    pending.append(entry.path)
                continue
            try:
                stat = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            name = os.path.relpath(entry.path, root)
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for path in extra:
        try:
            stat = os.stat(path)
            digest.update(f"+{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"+{path}\0missing\n".encode())
    return digest.hexdigest()
