"""The compiled function torchshim's backend hands Dynamo while Dynamo's output is being saved
(torch 2.10+). Imports torch's private ``SerializableCallable`` at import: imported only by
:mod:`torchshim.shims._program` on a series that has it.

A saved Dynamo program names this class (by module and name) as the way to rebuild its compiled
function, so the class lives at module level."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from torch._dynamo.aot_compile_types import SerializableCallable

#: How a payload becomes a callable again: set by ``load_program`` for the one load it does.
RESTORE: contextvars.ContextVar[Callable[[bytes], Any] | None] = contextvars.ContextVar(
    "torchshim_restore", default=None
)


class SavedGraph(SerializableCallable):
    """A compiled graph and the bytes torchshim rebuilds it from (its key, its graph)."""

    def __init__(self, fn: Callable[..., Any], payload: bytes) -> None:
        self.fn = fn
        self.payload = payload

    @classmethod
    def serialize_compile_artifacts(cls, fn: Any) -> bytes:
        payload: bytes = fn.payload
        return payload

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> Any:
        restore = RESTORE.get()
        if restore is None:
            raise RuntimeError(
                "a program saved by torchshim is loaded through torchshim.compile (it rebuilds "
                "the graphs from torchshim's cache), not by torch.compiler.load_compiled_function"
            )
        return restore(data)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)
