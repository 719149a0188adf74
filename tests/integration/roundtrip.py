"""The cross-process round trip the integration tests drive.

Process A (the pytest process) calls :func:`compile_all`; processes B and C run this file as a
script (``python roundtrip.py load BASE MANIFEST OUT``) to load every case from the cache directory
without compiling, compare with eager and count compilations: B from the directory A compiled
into, C from the directory after it was moved (see ``test_adaptor_roundtrip.run_roundtrip``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import torchshim
from torchshim.adaptors import handle_from_json, make_adaptor
from torchshim.shims import active

ADAPTORS = ("eager", "inductor", "inductor_standalone", "inductor_standalone_unpacked")
#: Case names that are an adaptor with options: (make_adaptor name, its keyword arguments).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "inductor_standalone_unpacked": ("inductor_standalone", {"artifact_format": "unpacked"}),
}


def make(name: str) -> Any:
    """The adaptor behind a case's adaptor name."""
    adaptor, kwargs = VARIANTS.get(name, (name, {}))
    return make_adaptor(adaptor, **kwargs)


def matrix_adaptor(name: str) -> str:
    """The adaptor a case's results count for in the matrix."""
    return VARIANTS.get(name, (name, {}))[0]


COMPILER_NAMES = ("gcc", "g++", "cc", "c++", "clang", "clang++", "nvcc", "ptxas")


# No annotations on the traced functions: under `from __future__ import annotations` they are
# strings, which symbolic_trace copies into the graph and AOTAutograd's cache key cannot format
# (standalone artifacts of such graphs do not save; the adaptor then returns no handle).
def f_single(x, w):  # type: ignore[no-untyped-def]
    return torch.softmax(torch.nn.functional.gelu(x @ w), dim=-1)


def f_tuple(x, w):  # type: ignore[no-untyped-def]
    h = torch.nn.functional.gelu(x @ w)
    return torch.softmax(h, dim=-1), h * 2


def f_methods(x, w):  # type: ignore[no-untyped-def]
    # what users write: tensor-method calls, torch.nn.functional calls and .shape reads (a traced
    # graph's call_method nodes carry no example values, which AOTAutograd's cache refused)
    h = torch.nn.functional.layer_norm(x, (x.shape[-1],))
    y = torch.tanh(h @ w) * 3 + x.sum(-1, keepdim=True)
    return y.relu().view(x.shape[0], -1).softmax(-1)


FUNCS: dict[str, Callable[..., Any]] = {"single": f_single, "tuple": f_tuple, "methods": f_methods}


@dataclass(frozen=True)
class Case:
    adaptor: str
    source: str  # "fx" | "dynamo"
    output: str  # "single" | "tuple" | "methods"
    shape: str  # "general" | "int"
    batch: int

    @property
    def name(self) -> str:
        return f"{self.adaptor}-{self.source}-{self.output}-{self.shape}"

    @property
    def runtime_shape(self) -> int | None:
        return self.batch if self.shape == "int" else None

    def inputs(self, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.batch)
        x, w = torch.randn(self.batch, 16, generator=gen), torch.randn(16, 32, generator=gen)
        return x.to(device), w.to(device)


def all_cases(adaptors: tuple[str, ...], outputs: tuple[str, ...] = tuple(FUNCS)) -> list[Case]:
    """Every case of the given adaptors (of ``outputs`` only, when given); each case has its own
    batch size (the same in every process), so that no case is an accidental cache hit of
    another."""
    cases = []
    for adaptor in adaptors:
        batch = 3 + 12 * ADAPTORS.index(adaptor)
        for source in ("fx", "dynamo"):
            for output in FUNCS:
                for shape in ("general", "int"):
                    if output in outputs:
                        cases.append(Case(adaptor, source, output, shape, batch))
                    batch += 1
    return cases


def available_adaptors() -> tuple[str, ...]:
    if "supports_standalone_compile" in torchshim.capabilities():
        return ADAPTORS
    return tuple(a for a in ADAPTORS if matrix_adaptor(a) != "inductor_standalone")


def _equal(out: Any, ref: Any) -> float:
    if isinstance(ref, tuple):
        if not isinstance(out, tuple) or len(out) != len(ref):
            raise AssertionError(f"expected a tuple of {len(ref)}, got {type(out).__name__}")
        return max(_equal(o, r) for o, r in zip(out, ref, strict=True))
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"expected a single tensor, got {type(out).__name__}")
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != {tuple(ref.shape)}")
    return float((out - ref).abs().max())


def _run_dynamo(case: Case, backend: Callable[..., Any], device: str) -> Any:
    torch.compiler.reset()
    x, w = case.inputs(device)
    if case.shape == "general":
        torch._dynamo.mark_dynamic(x, 0)
    fn = torch.compile(FUNCS[case.output], backend=backend, fullgraph=True, dynamic=False)
    return fn(x, w)


def _fx_graph(case: Case) -> torch.fx.GraphModule:
    return torch.fx.symbolic_trace(FUNCS[case.output])


def compile_all(
    base: Path,
    adaptors: tuple[str, ...],
    device: str = "cpu",
    outputs: tuple[str, ...] = tuple(FUNCS),
) -> dict[str, Any]:
    """Process A: compile every case (of ``outputs``) into ``base``; returns the manifest
    (handles as JSON), which names the cases the loading processes load."""
    manifest: dict[str, Any] = {}
    for adaptor_name in adaptors:
        with make(adaptor_name) as adaptor:
            adaptor.initialize_cache(base / "model", prefix="model")
            for case in all_cases((adaptor_name,), outputs):
                entry: dict[str, Any] = {"handle": None, "error": None}
                try:
                    ref = FUNCS[case.output](*case.inputs(device))
                    if case.source == "fx":
                        gm = _fx_graph(case)
                        fn, handle = adaptor.compile(
                            gm, list(case.inputs(device)), {}, case.runtime_shape, key=case.name
                        )
                        if fn is None:
                            raise RuntimeError("compile returned no callable")
                        out = fn(*case.inputs(device))
                    else:
                        seen: list[Any] = []

                        def backend(
                            gm: Any,
                            example_inputs: list[Any],
                            case: Case = case,
                            seen: list[Any] = seen,
                            adaptor: Any = adaptor,
                        ) -> Any:
                            fn, handle = adaptor.compile(
                                gm, example_inputs, {}, case.runtime_shape, key=case.name
                            )
                            seen.append(handle)
                            if fn is None:
                                raise RuntimeError("compile returned no callable")
                            return fn

                        out = _run_dynamo(case, backend, device)
                        if len(seen) != 1:
                            raise RuntimeError(f"Dynamo produced {len(seen)} graphs, expected 1")
                        handle = seen[0]
                    entry["max_err"] = _equal(out, ref)
                    entry["handle"] = handle.to_json() if handle is not None else None
                except Exception as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    entry["trace"] = traceback.format_exc()[-2000:]
                manifest[case.name] = entry
    return manifest


class CompilerProcessCounter:
    """Counts compiler processes that produce an output file (kernel builds), by watching
    ``subprocess.Popen``: how Inductor starts gcc on every series, and how Triton starts ptxas
    (the loader runs with TORCHINDUCTOR_COMPILE_THREADS=1, so Triton compiles in this process)."""

    def __init__(self) -> None:
        self.builds: list[str] = []
        self._original = subprocess.Popen.__init__

    @contextlib.contextmanager
    def watching(self) -> Iterator[CompilerProcessCounter]:
        original = self._original
        counter = self

        def init(popen_self: Any, args: Any, *a: Any, **kw: Any) -> None:
            argv = args if isinstance(args, (list, tuple)) else str(args).split()
            if argv:
                exe = os.path.basename(str(argv[0]))
                is_compiler = exe in COMPILER_NAMES or exe.endswith(("-gcc", "-g++"))
                flags = [str(x) for x in argv]
                # -E only preprocesses (torch 2.13+ hashes a header that way once per process)
                if is_compiler and "-o" in flags and "-E" not in flags:
                    counter.builds.append(" ".join(str(x) for x in argv)[:300])
            original(popen_self, args, *a, **kw)

        subprocess.Popen.__init__ = init  # type: ignore[method-assign]
        try:
            yield self
        finally:
            subprocess.Popen.__init__ = original  # type: ignore[method-assign]


def _files(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def load_all(base: Path, manifest: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Process B / C: load every case from ``base`` without compiling."""
    shim = active().module
    t0 = time.perf_counter()
    torchshim.warm_up()  # one-time CPU ISA probing (recorded per machine by torchshim), up front
    results: dict[str, Any] = {"warm_up_s": round(time.perf_counter() - t0, 2), "cases": {}}
    before = shim.compile_counters()
    triton_before = _files(base / "triton")
    counter = CompilerProcessCounter()
    adaptors = {}
    for name in available_adaptors():
        adaptors[name] = make(name)
        adaptors[name].initialize_cache(base / "model", prefix="model")
    with counter.watching():
        for case in all_cases(tuple(adaptors)):
            if case.name not in manifest:  # process A ran a subset of the cases (CI time)
                continue
            entry = manifest[case.name]
            adaptor = adaptors[case.adaptor]
            res: dict[str, Any] = {"error": None}
            builds_before = len(counter.builds)
            direct_before = getattr(adaptor, "direct_loads", 0)
            t = time.perf_counter()
            try:
                raw = entry.get("handle")
                handle = handle_from_json(raw) if raw else None
                if handle is None and case.adaptor != "eager":
                    raise RuntimeError(f"no handle was recorded in process A: {entry.get('error')}")
                ref = FUNCS[case.output](*case.inputs(device))
                if case.source == "fx":
                    gm = _fx_graph(case)
                    fn = adaptor.load(handle, gm, list(case.inputs(device)), 0, case.runtime_shape)
                    out = fn(*case.inputs(device))
                else:

                    def backend(
                        gm: Any,
                        example_inputs: list[Any],
                        case: Case = case,
                        adaptor: Any = adaptor,
                        handle: Any = handle,
                    ) -> Any:
                        return adaptor.load(handle, gm, example_inputs, 0, case.runtime_shape)

                    out = _run_dynamo(case, backend, device)
                res["max_err"] = _equal(out, ref)
            except Exception as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"
                res["trace"] = traceback.format_exc()[-2000:]
            res["seconds"] = round(time.perf_counter() - t, 3)
            res["kernel_builds"] = counter.builds[builds_before:]
            res["direct"] = getattr(adaptor, "direct_loads", 0) - direct_before
            results["cases"][case.name] = res
    for adaptor in adaptors.values():
        adaptor.close()
    after = shim.compile_counters()
    # a Triton kernel build writes its binaries into the Triton cache under ``base``
    results["new_triton_files"] = sorted(_files(base / "triton") - triton_before)[:20]
    results["counters"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return results


def main(argv: list[str]) -> int:
    mode, base, manifest_path, out_path = argv[1], Path(argv[2]), Path(argv[3]), Path(argv[4])
    device = argv[5] if len(argv) > 5 else "cpu"
    if mode != "load":
        raise SystemExit(f"unknown mode {mode!r}")
    manifest = json.loads(manifest_path.read_text())
    results = load_all(base, manifest, device)
    out_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
