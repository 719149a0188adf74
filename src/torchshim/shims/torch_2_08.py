"""Shim for torch 2.8.

What changed from 2.6/2.7: ``AOTAutogradCache`` inherits ``_get_shape_env`` from ``GuardedCache``
(so the stand-in must cover it too), and ``standalone_compile`` / ``CompiledArtifact`` appear.
``dynamic_shapes="from_graph"`` fails on 2.8.0 for single-output graphs and works from 2.9.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from torchshim._patching import patch_attr
from torchshim.shims import torch_2_06 as _base
from torchshim.shims._tuning import static_autotuners_relocated
from torchshim.shims.torch_2_05 import AlwaysHitShapeEnv, _fx_graph_cache
from torchshim.shims.torch_2_06 import *  # noqa: F403  (everything that did not change)

__all__ = list(_base.__all__)

FIRST_SERIES: tuple[int, int] = (2, 8)

CAPABILITIES: frozenset[str] = _base.CAPABILITIES | {
    "supports_standalone_compile",
    "supports_standalone_binary_format",
    "supports_standalone_unpacked_format",
    "supports_direct_cpu_load",
}

PATCH_TARGETS: tuple[str, ...] = (
    *_base.PATCH_TARGETS,
    "torch._functorch._aot_autograd.autograd_cache.AOTAutogradCache._get_shape_env",
    "torch._functorch._aot_autograd.autograd_cache.check_node_safe",
    "torch._inductor.triton_bundler.TritonBundler.load_autotuners",
)


def _aot_autograd_cache() -> Any:
    from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCache

    return AOTAutogradCache


@contextlib.contextmanager
def _shape_env_patches(stand_in: Any) -> Iterator[None]:
    getter = staticmethod(lambda: stand_in)
    with (
        patch_attr(_fx_graph_cache(), "_get_shape_env", getter),
        # torch >= 2.8: AOTAutogradCache inherits _get_shape_env from GuardedCache
        patch_attr(_aot_autograd_cache(), "_get_shape_env", getter),
    ):
        yield


def shape_env_stand_in() -> contextlib.AbstractContextManager[None]:
    return _shape_env_patches(AlwaysHitShapeEnv())


@contextlib.contextmanager
def private_kernel_cache(directory: str) -> Iterator[None]:
    # torch >= 2.8: a loaded graph's statically launched kernels come back pickled with the
    # compiling process's paths; they find (and save) their tuning results here instead
    with (
        _base.private_kernel_cache(directory),
        static_autotuners_relocated(os.path.join(directory, "inductor")),
    ):
        yield


def _node_is_safe(node: Any) -> None:
    return None


@contextlib.contextmanager
def force_autograd_cacheable() -> Iterator[None]:
    # torch >= 2.8 (standalone_compile): AOTAutogradCache refuses graphs with a call_method whose
    # receiver has no example_value (every torch.fx.symbolic_trace graph: `x.sum()`) or a call of
    # a function outside its allow-list; the artifact then cannot be saved ("no aot_autograd
    # artifacts"). A standalone artifact is found by torchshim's own key, and AOTAutograd traces
    # through those calls, so the compiled artifact does not depend on them.
    from torch._functorch._aot_autograd import autograd_cache

    with patch_attr(autograd_cache, "check_node_safe", _node_is_safe):
        yield


def standalone_compile(
    graph: Any, example_inputs: Sequence[Any], dynamic_shapes: str, config_patches: dict[str, Any]
) -> Any:
    # The function, not torch._inductor.standalone_compile: importing the submodule of the same name
    # rebinds that package attribute to the module.
    from torch._inductor.standalone_compile import standalone_compile as _standalone_compile

    return _standalone_compile(
        graph,
        list(example_inputs),
        dynamic_shapes=dynamic_shapes,  # type: ignore[arg-type]
        options={"config_patches": dict(config_patches)},
    )


def save_compiled_artifact(artifact: Any, path: str, fmt: str) -> None:
    artifact.save(path=path, format=fmt)


def load_compiled_artifact(path: str, fmt: str) -> Any:
    from torch._inductor.standalone_compile import CompiledArtifact

    return CompiledArtifact.load(path=path, format=fmt)  # type: ignore[arg-type]
