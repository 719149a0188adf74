"""Scoped, restoring patches. The only way torchshim changes attributes or environment variables.

Each patch is a context manager that restores the previous state on exit (also when the body
raises) and refuses to create an attribute that does not exist, so a hook that moved fails loudly
instead of leaving a dead attribute behind. Nothing is patched at import time.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from torchshim.errors import PatchTargetMissing

__all__ = ["active_patch_count", "patch_attr", "patch_environ"]

_MISSING = object()
_lock = threading.Lock()
_active = 0


def active_patch_count() -> int:
    """How many scoped patches are open right now (0 outside any torchshim operation)."""
    return _active


def _enter() -> None:
    global _active
    with _lock:
        _active += 1


def _leave() -> None:
    global _active
    with _lock:
        _active -= 1


@contextlib.contextmanager
def patch_attr(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Replace ``owner.name`` with ``value`` for the duration of the block.

    For classes the raw ``__dict__`` entry is saved and put back, so static and class methods
    keep their descriptors, and an attribute that was only inherited is removed again instead of
    being pinned on the subclass. Raises :class:`PatchTargetMissing` when ``owner`` has no such
    attribute.
    """
    if not hasattr(owner, name):
        owner_name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
        raise PatchTargetMissing(
            f"cannot patch {owner_name}.{name}: the attribute does not exist in the installed torch. "
            "The private hook has moved or been removed; run `torchshim doctor` to see which hooks "
            "this torch build breaks."
        )
    own = vars(owner) if isinstance(owner, type) else None
    saved = own.get(name, _MISSING) if own is not None else getattr(owner, name)
    setattr(owner, name, value)
    _enter()
    try:
        yield
    finally:
        _leave()
        if saved is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, saved)


@contextlib.contextmanager
def patch_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for ``None``, unset) environment variables for the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    _enter()
    try:
        for key, val in values.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val
        yield
    finally:
        _leave()
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
