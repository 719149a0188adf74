"""Shim for torch 2.11 to 2.15.

What changed from 2.10, and broke the reference design twice:

* while hashing a graph, ``FxGraphHashDetails`` reads ``_get_shape_env().var_to_hint_override``, so
  the shape-env stand-in must carry that attribute;
* a cache hit records its result through ``CompileEventLogger``, which raises "No toplevel event
  active" when a metrics context is open without a ``dynamo_timed`` event. Look-ups made here never
  open the metrics context (they need none), so nothing changes in ``lookup_fx_graph``.

2.12 - 2.15 only add optional parameters (``compile_region_name``, ``donate_graph_module``,
``fake_mode``, ``_check_can_cache`` keywords) and a ``version`` key in ``CacheBase.get_system()``.

Saved Dynamo output on 2.10 fails where 2.11 works, each time as a miss that traces, never a wrong
result: a saved trace whose guards index a dict's keys by position (GPT-2 from transformers 5) does
not load (``IndexError`` in ``getitem_on_dict_manager``), and a capture in a process that compiled
other graphs before can fail Dynamo's own check of the new guards ("Guard failed on the same frame
it was created ... GLOBAL_STATE changed: grad_mode"). Capability ``supports_program_real_models``
marks 2.11+.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torchshim.shims import torch_2_10 as _base
from torchshim.shims.torch_2_05 import AlwaysHitShapeEnv as _AlwaysHitShapeEnv210
from torchshim.shims.torch_2_08 import _shape_env_patches
from torchshim.shims.torch_2_10 import *  # noqa: F403  (everything that did not change)

__all__ = list(_base.__all__)

FIRST_SERIES: tuple[int, int] = (2, 11)

CAPABILITIES: frozenset[str] = _base.CAPABILITIES | {"supports_program_real_models"}


class AlwaysHitShapeEnv(_AlwaysHitShapeEnv210):
    """The 2.5 - 2.10 stand-in plus what torch 2.11+ reads while hashing a graph."""

    def __init__(self) -> None:
        super().__init__()
        # torch >= 2.11: FxGraphHashDetails.__init__ reads it (hint overrides are part of the key).
        self.var_to_hint_override: dict[Any, int] = {}


def shape_env_stand_in() -> contextlib.AbstractContextManager[None]:
    return _shape_env_patches(AlwaysHitShapeEnv())
