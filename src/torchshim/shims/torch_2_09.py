"""Shim for torch 2.9.

What changed from 2.8: ``standalone_compile(dynamic_shapes="from_graph")`` works for single-output
graphs (2.8.0 raised ``TypeError: 'Node' object is not iterable``). Everything else is 2.8's.
"""

from __future__ import annotations

from torchshim.shims import torch_2_08 as _base
from torchshim.shims.torch_2_08 import *  # noqa: F403  (everything that did not change)

__all__ = list(_base.__all__)

FIRST_SERIES: tuple[int, int] = (2, 9)

CAPABILITIES: frozenset[str] = _base.CAPABILITIES | {"supports_standalone_from_graph"}
