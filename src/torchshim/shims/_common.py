"""Helpers shared by the shim modules. Only ``torch_source_fingerprint``, ``torch_source_key`` and
``torch_ptxas_environment`` import torch (inside the function); the rest is pure Python."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from torchshim._stable import stable_digest, stable_json

log = logging.getLogger(__name__)

__all__ = [
    "config_patch_existing",
    "relocate_triton_groups",
    "source_tree_fingerprint",
    "stable_digest",
    "stable_json",
    "torch_ptxas_environment",
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


def torch_ptxas_environment() -> dict[str, str]:
    """``TRITON_PTXAS_PATH`` naming the ptxas a CUDA build of torch ships (``torch/bin/ptxas``,
    where it is an executable and the variable is unset); empty otherwise.

    Triton reads ptxas's version once per process and puts it in every kernel's hash. Torch
    points Triton at its own ptxas only just before it compiles a kernel
    (``_inductor.runtime.compile_tasks._set_triton_ptxas_path``, 2.5 - 2.15), while its code
    generation has already read the version, of Triton's bundled ptxas, for each kernel's
    ``backend_hash``. So a compiling process hashed a kernel with one version and a loading
    process, which generates no code, with the other: a loading process compiled again every
    Triton kernel its artifact does not launch directly (H200, torch 2.11: matrix/GPU.md).
    Setting the variable first, as torch itself later would, gives both the same version."""
    if os.environ.get("TRITON_PTXAS_PATH") is not None:
        return {}
    import torch

    ptxas = os.path.join(os.path.dirname(torch.__file__), "bin", "ptxas")
    if os.path.isfile(ptxas) and os.access(ptxas, os.X_OK):
        return {"TRITON_PTXAS_PATH": ptxas}
    return {}


def relocate_triton_groups(directory: str) -> int:
    """Point the Triton kernel groups under ``directory/triton`` at the directory they are in;
    returns how many were rewritten.

    Triton's file cache finds a compiled kernel through ``<hash>/__grp__<name>.json``, which
    names each of the kernel's files by absolute path, and compiles the kernel again when one is
    missing (``FileCacheManager.get_group``, Triton 3.1 - 3.6). An entry is compiled in a staging
    directory, published by a rename and loaded from a private copy, so those paths named a
    directory that no longer existed: a loading process compiled again every kernel the artifact
    does not launch directly. Torch's bundler rewrites the paths when it writes kernels out, but
    skips a kernel directory that already exists, as it does in a copied entry. A group whose
    files all sit beside it is rewritten through a new file and a rename, so that a file linked
    from the entry is replaced, never changed; its kernel's other ``.json`` files likewise."""
    root = os.path.join(directory, "triton")
    try:
        kernels = os.listdir(root)
    except OSError:
        return 0  # no Triton kernels here (a CPU entry)
    rewritten = 0
    for kernel in kernels:
        here = os.path.join(root, kernel)
        try:
            names = os.listdir(here)
        except OSError:
            continue
        for name in names:
            if not (name.startswith("__grp__") and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(here, name), encoding="utf-8") as f:
                    children = json.load(f)["child_paths"]
                olds = {os.path.dirname(p) for p in children.values()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not a group this knows: Triton compiles that kernel again
            if olds == {here} or len(olds) != 1:
                continue
            if not all(os.path.basename(p) in names for p in children.values()):
                continue
            old = olds.pop()
            for other in names:
                if other.endswith(".json"):
                    _replace_in_file(os.path.join(here, other), old, here)
            rewritten += 1
    return rewritten


def _replace_in_file(path: str, old: str, new: str) -> None:
    """Never raises: a file that cannot be rewritten is left as it is (Triton then compiles its
    kernel again, as before)."""
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(path, "rb") as f:
            data = f.read()
        if old.encode() not in data:
            return
        with open(temp, "wb") as f:
            f.write(data.replace(old.encode(), new.encode()))
        os.replace(temp, path)
    except OSError as exc:
        log.debug("could not point %s at its directory: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(temp)


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
