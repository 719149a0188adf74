"""What every shim module exports. A conformance test checks each module against this Protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["FxCapture", "GraphInputs", "IsolatedCompile", "ShimModule"]


@dataclass
class FxCapture:
    """What a scoped ``compile_fx`` capture recorded.

    ``inner_compile`` is the wrapper to pass to ``compile_fx``; after the compile, ``keys`` holds the
    FX-graph-cache key of every graph Inductor compiled (one for an inference graph), ``hashed``
    the keys seen by the ``compiled_fx_graph_hash`` hook, ``module_paths`` the generated Python
    modules' files, ``uncacheable`` how many graphs came back without a key and ``trivial`` how
    many of those had no operation at all (Inductor runs such a graph as it is, compiling nothing).
    """

    inner_compile: Callable[..., Any] = field(repr=False)
    keys: list[str] = field(default_factory=list)
    hashed: list[str] = field(default_factory=list)
    module_paths: list[str] = field(default_factory=list)
    uncacheable: int = 0
    trivial: int = 0


@dataclass(frozen=True)
class GraphInputs:
    """The symbols a graph's inputs carry (names such as ``"s0"``), in order of first appearance.

    ``batch_symbol`` is the symbol that forms a whole leading dimension of the first input tensor
    that has a symbolic one (the batch or token count engines specialise), else the first size
    symbol; ``None`` when the inputs are static. ``batch_position`` says where its value can be
    read from the inputs at call time: ``(index, None)`` for an int input, ``(index, dim)`` for a
    tensor dimension. ``float_symbols`` are symbolic Python floats.
    """

    size_symbols: tuple[str, ...] = ()
    float_symbols: tuple[str, ...] = ()
    batch_symbol: str | None = None
    batch_position: tuple[int, int | None] | None = None


@dataclass
class IsolatedCompile:
    """What ``isolated_inputs`` yields: the inputs to compile with and, once the block has ended,
    the guards the compile added (JSON texts over the graph's input symbols; see
    ``install_guards``)."""

    inputs: list[Any]
    guards: list[str] = field(default_factory=list)


class ShimModule(Protocol):
    """The surface a ``torchshim.shims.torch_2_NN`` module provides."""

    #: First series this module serves (e.g. ``(2, 6)``); later series may re-export it.
    FIRST_SERIES: tuple[int, int]
    #: Named capabilities this module provides on the series it serves.
    CAPABILITIES: frozenset[str]
    #: Dotted paths of every torch attribute this module may patch (checked for leaks by tests).
    PATCH_TARGETS: tuple[str, ...]

    # --- FX graph cache (InductorAdaptor) -------------------------------------------------------
    def capture_fx_compilation(self) -> AbstractContextManager[FxCapture]:
        """Record cache keys and module paths of what ``compile_fx`` compiles in the block."""
        ...

    def shape_env_stand_in(self) -> AbstractContextManager[None]:
        """Give cache look-ups a shape environment whose guards always pass."""
        ...

    def force_cacheable(self) -> AbstractContextManager[None]:
        """Make ``FxGraphCache._check_can_cache`` accept every graph (higher-order ops included)."""
        ...

    def force_autograd_cacheable(self) -> AbstractContextManager[None]:
        """Make AOTAutograd's cache accept every node (standalone artifacts need its entry)."""
        ...

    def metrics_context(self) -> AbstractContextManager[None]:
        """Enter Dynamo's metrics context where the series has one (a no-op otherwise)."""
        ...

    def kernel_cache_environment(self, directory: str) -> dict[str, str]:
        """The environment variables that point Inductor's and Triton's caches into
        ``directory`` (what :meth:`private_kernel_cache` sets), and Triton at torch's own ptxas
        where torch ships one (see ``_common.torch_ptxas_environment``)."""
        ...

    def fx_cache_config(self, persist: bool) -> dict[str, Any]:
        """Inductor config for a compile whose FX-graph-cache entry is stored (``persist``) or
        not."""
        ...

    def check_compiler_config(self, config: Mapping[str, Any]) -> list[str]:
        """What is wrong with an Inductor config patch (unknown options, wrong value types)."""
        ...

    def cuda_graph_pool(self) -> Any:
        """A memory pool CUDA graphs can share."""
        ...

    def capture_cuda_graph(self, fn: Callable[..., Any], inputs: Sequence[Any], pool: Any) -> Any:
        """``(graph, outputs)``: ``fn(*inputs)`` warmed up and captured in a CUDA graph in
        ``pool``; replaying it recomputes ``outputs`` from the inputs' current values."""
        ...

    def static_input_indices(self, graph: Any, example_inputs: Sequence[Any]) -> frozenset[int]:
        """The graph inputs that are parameters or buffers (the same tensor at every call)."""
        ...

    def specialised_config(self) -> dict[str, Any]:
        """Inductor config a compile for one batch size gets unless the caller says otherwise."""
        ...

    def tunes_at_load(self, config: Mapping[str, Any]) -> str | None:
        """Why a graph compiled with ``config`` would tune again in a loading process, or
        ``None``."""
        ...

    def tuning_result_files(self, directory: str) -> list[str]:
        """The kernel tuning results Inductor wrote under ``directory`` (a graph's kernel cache:
        see :meth:`private_kernel_cache`) at its kernels' first calls, as relative paths."""
        ...

    def private_kernel_cache(self, directory: str) -> AbstractContextManager[None]:
        """Inductor's and Triton's caches in ``directory`` (``inductor/``, ``triton/``) for the
        block, with Inductor's in-memory code caches cleared, so that a compile writes, and a load
        reads, every file it needs there."""
        ...

    def kernels_in_process(self) -> AbstractContextManager[None]:
        """Inductor compiles, or finds in its caches, every Triton kernel in this process for the
        block: a load starts no compile-worker pool (see ``shims/_kernel_cache.py``)."""
        ...

    def remote_caches_off(self) -> AbstractContextManager[None]:
        """Turn off every remote cache Inductor and AOTAutograd would consult."""
        ...

    def autograd_cache_off(self) -> AbstractContextManager[None]:
        """Turn off the AOTAutograd cache, whose hits would skip the key capture."""
        ...

    def compile_fx(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        config_patches: dict[str, Any],
        inner_compile: Callable[..., Any],
    ) -> Callable[..., Any]:
        """Run Inductor's ``compile_fx`` with the given inner compile and config patches."""
        ...

    def compiled_fx_graph_hash_hook(self) -> AbstractContextManager[list[str]]:
        """Record every key ``compiled_fx_graph_hash`` returns in the block."""
        ...

    def lookup_fx_graph(
        self, key: str, example_inputs: Sequence[Any], graph: Any
    ) -> Callable[[list[Any]], Any] | None:
        """Look a compiled graph up by key (no compilation); ``None`` on a miss."""
        ...

    def artifact_config(self) -> dict[str, Any]:
        """Inductor config every stored compile uses, whatever the caller asks (keys this torch
        has): nothing that writes files at run time, keyed by where the compile happened."""
        ...

    def capture_config(self) -> AbstractContextManager[None]:
        """Dynamo configuration under which a compiling and a loading process trace the same
        graph (Python floats specialised, so no compile-triggered re-trace)."""
        ...

    def dynamo_control_flow(self) -> tuple[type[BaseException], ...]:
        """Exceptions Dynamo raises through a backend as control flow (re-trace, skip a frame):
        an adaptor must let them pass, never treat them as a rejected graph."""
        ...

    def graph_returns_tuple(self, graph: Any) -> bool:
        """Whether the FX graph returns a tuple (else a single value)."""
        ...

    # --- shapes -----------------------------------------------------------------------------------
    def canonical_code(self, graph: Any, example_inputs: Sequence[Any]) -> str:
        """The graph's code with its input symbols renamed by position, for keys that do not
        depend on how Dynamo happened to name them."""
        ...

    def describe_graph_inputs(self, graph: Any, example_inputs: Sequence[Any]) -> GraphInputs:
        """The size and float symbols of the graph's inputs (from the examples or the graph's
        placeholder metadata), and which one is the batch."""
        ...

    def isolated_inputs(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        bindings: Mapping[str, int],
        ranges: Mapping[str, tuple[int, int]] | None = None,
    ) -> AbstractContextManager[IsolatedCompile]:
        """Inside the block: a copy of the inputs' shape environment (Dynamo's stays untouched)
        and fake inputs over it, with the value ``bindings`` gives a symbol (``{"s0": 8}``
        specialises ``s0``) and the inclusive range ``ranges`` bounds one to (``{"s0": (9,
        64)}``); after it, the guards the compile added (none that a range implies)."""
        ...

    def install_guards(
        self, graph: Any, example_inputs: Sequence[Any], guards: Sequence[str]
    ) -> bool:
        """Have the inputs' shape environment (Dynamo's, inside a backend) guard on ``guards``
        (recorded by ``isolated_inputs``); ``False`` when one does not hold for these inputs."""
        ...

    def mark_dynamic(self, tensor: Any, dim: int) -> None:
        """Ask Dynamo to trace dimension ``dim`` of ``tensor`` symbolically (a hint: a size it
        must specialise does not raise)."""
        ...

    def specialize_float_inputs(self, graph: Any) -> None:
        """Inside a Dynamo backend: when the graph carries Python floats as inputs, ask Dynamo to
        re-trace with them specialised (raises Dynamo's restart); returns when it has none."""
        ...

    # --- standalone_compile (InductorStandaloneAdaptor) ----------------------------------------
    def in_tracing_context(self) -> bool:
        """Whether a Dynamo trace is in progress (so its shape environment can be used)."""
        ...

    def standalone_compile(
        self,
        graph: Any,
        example_inputs: Sequence[Any],
        dynamic_shapes: str,
        config_patches: dict[str, Any],
    ) -> Any:
        """Compile with ``torch._inductor.standalone_compile``; the artifact is callable."""
        ...

    def save_compiled_artifact(self, artifact: Any, path: str, fmt: str) -> None:
        """``CompiledArtifact.save(path=, format=)``."""
        ...

    def load_compiled_artifact(self, path: str, fmt: str) -> Any:
        """``CompiledArtifact.load(path=, format=)``."""
        ...

    def plan_direct_load(self, workdir: str, graph: Any) -> str | None:
        """After a standalone CPU compile of ``graph`` into ``workdir``: write the plan for
        :meth:`direct_load` and return ``None``, or return why the graph must load through
        torch's loader."""
        ...

    def direct_load(self, workdir: str) -> Callable[..., list[Any]]:
        """The graph planned in ``workdir``, with no compiler import (raises on anything
        unexpected: the caller falls back to :meth:`load_compiled_artifact`)."""
        ...

    # --- factors, counters, warm-up -----------------------------------------------------------
    def hash_factors(self, torch_key_hex: str | None = None) -> dict[str, str]:
        """The compiler's cache-key factors: system, torch key (``torch_key_hex`` where the caller
        knows it, see :meth:`torch_source_key`), portable Inductor/functorch config."""
        ...

    def torch_source_fingerprint(self) -> str:
        """A digest of the paths, sizes and modification times of what ``torch_key`` hashes (and
        of the torch build): equal fingerprints mean an equal ``torch_key``."""
        ...

    def torch_source_key(self, known: str | None = None) -> str:
        """``torch_key()`` as hex; ``known`` (recorded for this fingerprint) fills torch's own
        cache of it first where the series allows (2.8+), so that nothing hashes the sources."""
        ...

    def compile_counters(self) -> dict[str, int]:
        """Torch's own compile counters, flattened to ``"group.name" -> count``."""
        ...

    def cpu_probe_fingerprint(self) -> str:
        """Everything the answer of Inductor's CPU vector-ISA probe depends on (torch build,
        C++ compiler, CPU), as a stable string."""
        ...

    def cpu_probe_results(
        self, known: Mapping[str, bool]
    ) -> AbstractContextManager[dict[str, bool]]:
        """Answer Inductor's CPU vector-ISA probes from ``known`` in the block; probes it has to
        run are recorded in the yielded dict, for the caller to keep."""
        ...

    def warm_up_cpu(self) -> None:
        """Pay Inductor's one-time CPU initialisation (vector ISA probing) now."""
        ...

    # --- Dynamo's saved output (capability supports_dynamo_program) ----------------------------
    def capture_program(
        self, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], backend: Any
    ) -> Any:
        """Trace ``fn(*args, **kwargs)`` whole with ``backend`` into a program that can be saved
        (Dynamo's bytecode, its guards and the backend's compiled graphs)."""
        ...

    def save_program(self, program: Any) -> bytes:
        """A captured program as bytes."""
        ...

    def load_program(
        self, data: bytes, f_globals: dict[str, Any], restore: Callable[[bytes], Any]
    ) -> Any:
        """The program saved as ``data``; ``restore`` rebuilds each compiled graph from the
        payload given to :meth:`saved_graph`. Raises when the bytes are not a program of this
        torch build."""
        ...

    def saved_graph(self, fn: Callable[..., Any], payload: bytes) -> Any:
        """What the backend returns while a program is captured: ``fn`` and the bytes it is
        rebuilt from."""
        ...

    def program_guard(self, program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """Whether the program's saved guards accept the call."""
        ...

    def program_why_not(self, program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
        """The first saved guard that refuses the call, in words."""
        ...

    def program_call(self, program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Run a program whose guards accepted the call."""
        ...

    def program_modules(self, program: Any) -> list[str]:
        """The modules whose code the program's trace read."""
        ...

    def graph_to_bytes(self, graph: Any) -> bytes:
        """A Dynamo graph with the metadata torchshim reads (inputs' and outputs' example values)."""
        ...

    def graph_from_bytes(self, data: bytes) -> Any:
        """The graph :meth:`graph_to_bytes` saved, its example values in a fresh fake mode."""
        ...
