"""The function a saved trace of an ``nn.Module`` with a decorated ``forward`` traces.

It lives in a module of its own because Dynamo runs a saved trace with the traced function's module
globals as its only globals (torch 2.10 - 2.12 add no builtins: a trace whose code reads
``type`` fails "Missing required external references"), so this module holds every builtin as a
global of its own.
"""

from __future__ import annotations

import builtins
from typing import Any

globals().update({k: v for k, v in vars(builtins).items() if not k.startswith("__")})

__all__ = ["run_module"]


def run_module(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The module called as a user calls it, from a function a warm process imports by name (a
    decorator's closure -- transformers wraps most forwards -- cannot be pickled). Its parameters
    are named as such decorators name theirs, so Dynamo names the graph's inputs as an ordinary
    trace of the model does."""
    return self(*args, **kwargs)
