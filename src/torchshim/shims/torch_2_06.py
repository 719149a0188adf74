"""Shim for torch 2.6 and 2.7.

What changed from 2.5: ``FxGraphCache._lookup_graph`` takes a required ``constants`` argument and
returns ``(graph, cache_info)``; Dynamo has a metrics context. (2.7 turns the AOTAutograd cache on by
default; ``autograd_cache_off`` already handles that by probing the config key.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torchshim.shims import torch_2_05 as _base
from torchshim.shims._shape_env import tensorified_floats
from torchshim.shims.torch_2_05 import *  # noqa: F403  (everything that did not change)
from torchshim.shims.torch_2_05 import _fx_graph_cache

__all__ = list(_base.__all__)

FIRST_SERIES: tuple[int, int] = (2, 6)

CAPABILITIES: frozenset[str] = _base.CAPABILITIES | {"supports_metrics_context"}


@contextlib.contextmanager
def metrics_context() -> Iterator[None]:
    # torch >= 2.6: compile_fx records into Dynamo's metrics context when one is open.
    from torch._dynamo.utils import get_metrics_context

    with get_metrics_context():
        yield


def lookup_fx_graph(
    key: str, example_inputs: Sequence[Any], graph: Any
) -> Callable[[list[Any]], Any] | None:
    # torch >= 2.6: _lookup_graph(key, example_inputs, local, remote_cache, constants)
    #               -> (graph | None, cache_info)
    from torch._inductor.output_code import CompiledFxGraphConstantsWithGm

    found: Callable[[list[Any]], Any] | None
    found, _info = _fx_graph_cache()._lookup_graph(
        key, list(example_inputs), True, None, CompiledFxGraphConstantsWithGm(graph)
    )
    return found


def specialize_float_inputs(graph: Any) -> None:
    # torch >= 2.6: Dynamo traces Python floats as 0-d tensor inputs; Inductor's
    # tensorify_python_scalars pass may later ask Dynamo, through TensorifyScalarRestartAnalysis,
    # to re-trace with some of them specialised (named in TensorifyState). Asking for all of them
    # up front gives every process the same graph, whether it compiles or loads.
    names = tensorified_floats(graph)
    if not names:
        return
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis
    from torch._dynamo.symbolic_convert import TensorifyState

    for name in names:
        TensorifyState.specialize(name)
    raise TensorifyScalarRestartAnalysis
