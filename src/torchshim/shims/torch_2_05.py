"""Shim for torch 2.5.

The base of the chain: later modules re-export what did not change and override what did.
Torch's private modules are imported inside the functions, so this module imports under any torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torchshim._patching import patch_attr
from torchshim.shims._common import (
    config_patch_existing,
    stable_digest,
    stable_json,
    torch_source_fingerprint,
    torch_source_key,
)
from torchshim.shims._common import walk_module_file as _walk_module_file
from torchshim.shims._direct import direct_load, plan_direct_load  # 2.8+: supports_direct_cpu_load
from torchshim.shims._kernel_cache import (
    POOL_TARGET,
    kernel_cache_environment,
    kernels_in_process,
    private_kernel_cache,
)
from torchshim.shims._no_program import (  # torch 2.10+ only (supports_dynamo_program)
    capture_program,
    graph_from_bytes,
    graph_to_bytes,
    load_program,
    program_call,
    program_guard,
    program_modules,
    program_why_not,
    save_program,
    saved_graph,
)
from torchshim.shims._protocol import FxCapture
from torchshim.shims._shape_env import (
    canonical_code,
    describe_graph_inputs,
    install_guards,
    isolated_inputs,
)
from torchshim.shims._tuning import tuning_result_files

__all__ = [
    "CAPABILITIES",
    "FIRST_SERIES",
    "PATCH_TARGETS",
    "AlwaysHitShapeEnv",
    "artifact_config",
    "autograd_cache_off",
    "canonical_code",
    "capture_config",
    "capture_cuda_graph",
    "capture_fx_compilation",
    "capture_program",
    "check_compiler_config",
    "compile_counters",
    "compile_fx",
    "compiled_fx_graph_hash_hook",
    "cpu_probe_fingerprint",
    "cpu_probe_results",
    "cuda_graph_pool",
    "describe_graph_inputs",
    "direct_load",
    "dynamo_control_flow",
    "force_autograd_cacheable",
    "force_cacheable",
    "fx_cache_config",
    "graph_from_bytes",
    "graph_returns_tuple",
    "graph_to_bytes",
    "hash_factors",
    "in_tracing_context",
    "install_guards",
    "isolated_inputs",
    "kernel_cache_environment",
    "kernels_in_process",
    "load_compiled_artifact",
    "load_program",
    "lookup_fx_graph",
    "mark_dynamic",
    "metrics_context",
    "plan_direct_load",
    "private_kernel_cache",
    "program_call",
    "program_guard",
    "program_modules",
    "program_why_not",
    "remote_caches_off",
    "save_compiled_artifact",
    "save_program",
    "saved_graph",
    "shape_env_stand_in",
    "specialised_config",
    "specialize_float_inputs",
    "standalone_compile",
    "static_input_indices",
    "torch_source_fingerprint",
    "torch_source_key",
    "tunes_at_load",
    "tuning_result_files",
    "warm_up_cpu",
]

FIRST_SERIES: tuple[int, int] = (2, 5)

CAPABILITIES: frozenset[str] = frozenset(
    {
        "supports_inductor_fx_cache",
        "supports_cache_key_capture",
    }
)

PATCH_TARGETS: tuple[str, ...] = (
    "torch._inductor.codecache.compiled_fx_graph_hash",
    "torch._inductor.codecache.FxGraphCache._get_shape_env",
    "torch._inductor.codecache.FxGraphCache._check_can_cache",
    "torch._inductor.cpu_vec_isa.VecISA.check_build",
    POOL_TARGET,
)


class AlwaysHitShapeEnv:
    """Stand-in for ``ShapeEnv`` during FX-graph-cache look-ups outside a Dynamo trace.

    Every guard passes: the caller (the adaptor) has already chosen the entry by key, and the
    entry was compiled for exactly the shapes it will be called with. Carries every attribute
    torch 2.5 - 2.10 reads while hashing, saving and looking up a graph.
    """

    def __init__(self) -> None:
        self.guards: list[Any] = []

    def evaluate_guards_expression(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def get_pruned_guards(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def produce_guards_expression(self, *args: Any, **kwargs: Any) -> str:
        return ""


def _fx_graph_cache() -> Any:
    from torch._inductor.codecache import FxGraphCache

    return FxGraphCache


# --- FX graph cache -------------------------------------------------------------------------------


@contextlib.contextmanager
def compiled_fx_graph_hash_hook() -> Iterator[list[str]]:
    from torch._inductor import codecache

    seen: list[str] = []
    original = codecache.compiled_fx_graph_hash

    def hooked(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        # (key, debug_lines) on every series 2.5 - 2.15
        key = out[0] if isinstance(out, tuple) else out
        if isinstance(key, str):
            seen.append(key)
        return out

    with patch_attr(codecache, "compiled_fx_graph_hash", hooked):
        yield seen


@contextlib.contextmanager
def capture_fx_compilation() -> Iterator[FxCapture]:
    from torch._dynamo.utils import count_calls
    from torch._inductor.compile_fx import compile_fx_inner

    def inner_compile(gm: Any, example_inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if count_calls(gm.graph) == 0:  # compile_fx_inner returns such graphs as they are
            capture.trivial += 1
        out = compile_fx_inner(gm, example_inputs, *args, **kwargs)
        key = getattr(out, "_fx_graph_cache_key", None)
        if isinstance(key, str):
            capture.keys.append(key)
        else:
            capture.uncacheable += 1
        path = _walk_module_file(getattr(out, "current_callable", None))
        if path:
            capture.module_paths.append(path)
        return out

    capture = FxCapture(inner_compile=inner_compile)
    with compiled_fx_graph_hash_hook() as hashed:
        capture.hashed = hashed
        yield capture


@contextlib.contextmanager
def shape_env_stand_in() -> Iterator[None]:
    stand_in = AlwaysHitShapeEnv()
    with patch_attr(_fx_graph_cache(), "_get_shape_env", staticmethod(lambda: stand_in)):
        yield


def _accept_any(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def force_cacheable() -> Iterator[None]:
    with patch_attr(_fx_graph_cache(), "_check_can_cache", staticmethod(_accept_any)):
        yield


@contextlib.contextmanager
def force_autograd_cacheable() -> Iterator[None]:
    # Only standalone_compile (torch >= 2.8) needs AOTAutograd's cache; nothing to force here.
    yield


@contextlib.contextmanager
def metrics_context() -> Iterator[None]:
    # torch 2.5 has no Dynamo metrics context (get_metrics_context appears in 2.6).
    yield


def fx_cache_config(persist: bool) -> dict[str, Any]:
    # fx_graph_cache / force_disable_caches / fx_graph_remote_cache: Inductor config keys on
    # 2.5 - 2.15. A stored compile goes through the (local) FX graph cache so that its entry can
    # be captured; one that is not stored caches nothing.
    config: dict[str, Any] = {"fx_graph_remote_cache": False}
    if persist:
        config["fx_graph_cache"] = True
    else:
        config["force_disable_caches"] = True
    return config


def check_compiler_config(config: Mapping[str, Any]) -> list[str]:
    """Problems of an Inductor config patch: unknown options and values of another type than
    the option's default (a bool option given a string, say). Nested options use dots."""
    import torch._inductor.config as inductor_config

    # ConfigModule._config (torch 2.5 - 2.15): every option by dotted name; its values are
    # _ConfigEntry records with a .default from 2.6, the defaults themselves on 2.5
    entries = getattr(inductor_config, "_config", None)
    problems: list[str] = []
    for name, value in config.items():
        if not isinstance(entries, dict):
            if not hasattr(inductor_config, name):
                problems.append(f"{name!r} is not an Inductor config option")
            continue
        if name not in entries:
            problems.append(f"{name!r} is not an Inductor config option")
            continue
        default = getattr(entries[name], "default", entries[name])
        if default is None or value is None:
            continue
        expected = type(default)
        if expected is bool and not isinstance(value, bool):
            problems.append(f"{name!r} takes true or false, got {value!r}")
        elif expected in (int, float) and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            problems.append(f"{name!r} takes a number, got {value!r}")
        elif expected is str and not isinstance(value, str):
            problems.append(f"{name!r} takes a string, got {value!r}")
    return problems


@contextlib.contextmanager
def remote_caches_off() -> Iterator[None]:
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_off = {
        "fx_graph_remote_cache": False,
        "autotune_remote_cache": False,  # key exists on 2.5 - 2.15
        "bundled_autotune_remote_cache": False,  # key exists from 2.6
    }
    with (
        config_patch_existing(inductor_config, inductor_off),
        # enable_remote_autograd_cache exists from torch 2.6
        config_patch_existing(functorch_config, {"enable_remote_autograd_cache": False}),
    ):
        yield


@contextlib.contextmanager
def autograd_cache_off() -> Iterator[None]:
    import torch._functorch.config as functorch_config

    # torch >= 2.7 turns the AOTAutograd cache on by default; a hit there skips compile_fx_inner,
    # so no FX-graph-cache key would be captured.
    with config_patch_existing(functorch_config, {"enable_autograd_cache": False}):
        yield


def compile_fx(
    graph: Any,
    example_inputs: Sequence[Any],
    config_patches: dict[str, Any],
    inner_compile: Callable[..., Any],
) -> Callable[..., Any]:
    from torch._inductor.compile_fx import compile_fx as _compile_fx

    out = _compile_fx(
        graph, list(example_inputs), inner_compile=inner_compile, config_patches=config_patches
    )
    if not callable(out):
        raise TypeError(f"compile_fx returned a {type(out).__name__}, not a callable")
    return out


def lookup_fx_graph(
    key: str, example_inputs: Sequence[Any], graph: Any
) -> Callable[[list[Any]], Any] | None:
    # torch 2.5: _lookup_graph(key, example_inputs, local, remote_cache) -> graph | None
    found: Callable[[list[Any]], Any] | None = _fx_graph_cache()._lookup_graph(
        key, list(example_inputs), True, None
    )
    return found


def graph_returns_tuple(graph: Any) -> bool:
    # compile_fx.graph_returns_tuple (identical in torch 2.5 - 2.15), written here with the public
    # FX API: importing compile_fx costs a warm process about 0.7 s of Inductor's compiler
    import torch

    if not isinstance(graph, torch.fx.GraphModule):
        return True
    last = next(iter(reversed(graph.graph.nodes)))
    (result,) = last.args
    if isinstance(result, (list, tuple)):
        return True
    schema = getattr(getattr(result, "target", None), "_schema", None)
    return (
        isinstance(result, torch.fx.Node)
        and schema is not None
        and len(schema.returns) > 1
        and all(str(r.type) == "Tensor" for r in schema.returns)
    )


def artifact_config() -> dict[str, Any]:
    # Nothing: a kernel tuned at its first call (autotune_local_cache, on by default, 2.5 - 2.15)
    # writes its result beside the kernel, in the directory the graph runs from; the adaptors keep
    # that directory until the first calls and add the results to the entry (adaptors/tuning.py),
    # and a loaded graph's pickled kernels are pointed there (2.8+, private_kernel_cache).
    # Upstream: pytorch/pytorch#181292 (the pickled kernels keep the compiling process's paths).
    return {}


def cuda_graph_pool() -> Any:
    import torch

    return torch.cuda.graph_pool_handle()


def capture_cuda_graph(fn: Callable[..., Any], inputs: Sequence[Any], pool: Any) -> Any:
    # torch.cuda.CUDAGraph / torch.cuda.graph(pool=...) (2.5 - 2.15). Warm-up runs on a side
    # stream first (lazy initialisation, autotuned kernels' first calls), as torch's docs ask.
    import torch

    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn(*inputs)
    graph.replay()  # the outputs of the capture itself are not computed until a replay
    torch.cuda.synchronize()
    return graph, outputs


def static_input_indices(graph: Any, example_inputs: Sequence[Any]) -> frozenset[int]:
    """Inputs that are a module's parameters or buffers: the same tensor at every call, so a
    CUDA graph reads them in place. Dynamo marks them with ``_dynamo_static_input_type``
    (torch 2.5 - 2.15, when it inlines nn.Modules and lifts their tensors to graph inputs)."""
    import torch

    found = set()
    for index, value in enumerate(example_inputs):
        if isinstance(value, torch.nn.Parameter) or (
            isinstance(value, torch.Tensor)
            and getattr(value, "_dynamo_static_input_type", None) is not None
        ):
            found.add(index)
    return frozenset(found)


def specialised_config() -> dict[str, Any]:
    # a graph compiled for one batch size is compiled once and served often: tune it harder
    # (max_autotune exists on 2.5 - 2.15)
    return {"max_autotune": True}


def tunes_at_load(config: Mapping[str, Any]) -> str | None:
    # coordinate_descent_tuning (2.5 - 2.15) tunes at a kernel's first call, also in a process
    # that loads the kernel. Upstream: pytorch/pytorch#172819
    if config.get("coordinate_descent_tuning"):
        return (
            "coordinate_descent_tuning=True: Inductor tunes at the first call, also in every "
            "process that loads the graph (pytorch/pytorch#172819), so loads of these graphs "
            "re-tune and rebuild kernels"
        )
    return None


@contextlib.contextmanager
def capture_config() -> Iterator[None]:
    import torch._dynamo.config as dynamo_config

    # specialize_float exists on torch 2.5 - 2.15 (True by default on 2.5, False from 2.6, when
    # Dynamo began tracing Python floats symbolically and Inductor re-tracing to specialise them).
    with dynamo_config.patch(specialize_float=True):
        yield


def dynamo_control_flow() -> tuple[type[BaseException], ...]:
    # RestartAnalysis (TensorifyScalarRestartAnalysis and its siblings) and SkipFrame exist on
    # torch 2.5 - 2.15: Dynamo raises them through a backend to re-trace or skip a frame.
    from torch._dynamo import exc

    return (exc.RestartAnalysis, exc.SkipFrame)


def mark_dynamic(tensor: Any, dim: int) -> None:
    # maybe_mark_dynamic (torch 2.5 - 2.15): a hint, not a constraint, so a size Dynamo must
    # specialise (0 or 1 at the first call) does not raise
    from torch._dynamo import maybe_mark_dynamic

    maybe_mark_dynamic(tensor, dim)


def specialize_float_inputs(graph: Any) -> None:
    # torch 2.5 specialises Python floats while tracing (specialize_float defaults to True there),
    # so its graphs never carry float inputs to specialise.
    return None


# --- standalone_compile: absent before torch 2.8 -------------------------------------------------


def in_tracing_context() -> bool:
    from torch._guards import TracingContext

    return TracingContext.try_get() is not None


def _no_standalone() -> NotImplementedError:
    return NotImplementedError(
        "standalone_compile exists from torch 2.8; the registry routes capability checks so this "
        "is never reached through the facade"
    )


def standalone_compile(
    graph: Any, example_inputs: Sequence[Any], dynamic_shapes: str, config_patches: dict[str, Any]
) -> Any:
    raise _no_standalone()


def save_compiled_artifact(artifact: Any, path: str, fmt: str) -> None:
    raise _no_standalone()


def load_compiled_artifact(path: str, fmt: str) -> Any:
    raise _no_standalone()


# --- factors, counters, warm-up -------------------------------------------------------------------


def _portable_config(config: Any) -> dict[str, Any]:
    try:
        return dict(config.save_config_portable())
    except KeyError:
        # torch 2.5: functorch's config has no _cache_config_ignore_prefix, so
        # save_config_portable() raises KeyError. Remove when: min torch >= 2.6
        return dict(config.get_config_copy())


def hash_factors(torch_key_hex: str | None = None) -> dict[str, str]:
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.codecache import CacheBase

    return {
        "system": stable_json(CacheBase.get_system()),
        "torch_key": torch_key_hex if torch_key_hex is not None else torch_source_key(),
        "inductor_config": stable_digest(_portable_config(inductor_config)),
        "functorch_config": stable_digest(_portable_config(functorch_config)),
    }


def compile_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    flat: dict[str, int] = {}
    for group, counter in counters.items():
        for name, count in counter.items():
            flat[f"{group}.{name}"] = int(count)
    return flat


@functools.lru_cache(maxsize=1)
def cpu_probe_fingerprint() -> str:
    # What Inductor's CPU vector-ISA probe (VecISA.check_build: build a test program with the
    # ISA's flags, load it in a child Python) depends on: the torch build and its headers, the
    # C++ compiler, the CPU. Torch 2.5 - 2.15 keys its own probe binaries on compiler + torch.
    import platform
    import sys

    from torch._inductor.cpp_builder import get_compiler_version_info, get_cpp_compiler

    from torchshim._version import installed_torch_version, torch_git_version

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            cpu = sorted(
                {
                    line.split(":", 1)[1].strip()
                    for line in info
                    if line.startswith(("flags", "model name"))
                }
            )
    except OSError:
        cpu = [platform.processor()]
    compiler = get_cpp_compiler()
    return stable_json(
        {
            "torch": installed_torch_version(),
            "git": torch_git_version(),
            "python": sys.version,
            "platform": [sys.platform, platform.machine()],
            "cpu": stable_digest(cpu),
            "compiler": [compiler, get_compiler_version_info(compiler)],
            "cxx_env": {k: os.environ.get(k, "") for k in ("CXX", "CC", "CFLAGS", "CXXFLAGS")},
        }
    )


@contextlib.contextmanager
def cpu_probe_results(known: Mapping[str, bool]) -> Iterator[dict[str, bool]]:
    # VecISA.check_build(self, code) -> bool on 2.5 - 2.15; callers cache its answer per ISA
    # (lru_cache on __bool__, valid_vec_isa_list), so answers given here last for the process.
    from torch._inductor.cpu_vec_isa import VecISA

    original = VecISA.check_build
    found: dict[str, bool] = {}

    def check_build(isa: Any, code: str) -> bool:
        token = f"{isa}|{stable_digest(code)}"
        if token in known:
            return bool(known[token])
        answer = bool(original(isa, code))
        found[token] = answer
        return answer

    with patch_attr(VecISA, "check_build", check_build):
        yield found


def warm_up_cpu() -> None:
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    pick_vec_isa()
