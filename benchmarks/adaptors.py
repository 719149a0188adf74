"""Per adaptor on the installed torch: compile seconds, load seconds (in a fresh process), the
load/compile ratio, and the per-call overhead of the returned callable over calling Inductor's
compiled artifact directly (median of interleaved rounds on a tiny input).

    python benchmarks/adaptors.py [--out benchmarks/results/adaptors-<series>.json]

Prints a table and writes JSON. The first compile and the first load of a process pay Inductor's
one-time start-up; both are reported separately and excluded from the per-graph figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import torchshim
from torchshim._version import installed_torch_version
from torchshim.adaptors import handle_from_json, make_adaptor
from torchshim.shims import active

GRAPHS = 5  # distinct graphs per adaptor (distinct batch sizes)
CALLS = 20000  # calls per overhead measurement


def f(x, w):  # type: ignore[no-untyped-def]
    return torch.relu(x @ w) + 1


def _graph(adaptor: str, i: int) -> torch.fx.GraphModule:
    """A distinct graph per adaptor and index (the constant is part of the graph), so that every
    timed compile is a cold one and no adaptor hits another's cache entries."""
    const = float(1 + i + 100 * ("inductor", "inductor_standalone").index(adaptor))

    def g(x, w):  # type: ignore[no-untyped-def]
        return torch.relu(x @ w) + const

    return torch.fx.symbolic_trace(g)


def _batch(adaptor: str, i: int) -> int:
    """Distinct shapes per adaptor, so that no adaptor hits another's FX-graph-cache entries."""
    return 2 + i + 100 * ("inductor", "inductor_standalone").index(adaptor)


def _inputs(batch: int) -> list[torch.Tensor]:
    return [torch.randn(batch, 8), torch.randn(8, 8)]


ROUNDS = 41


def _round_ns(fn: Any, args: list[Any], calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter_ns() - t0) / calls


def _paired_ns(wrapped: Any, direct: Any, args: list[Any]) -> tuple[float, float, float]:
    """Interleaved rounds of the two callables (so drift hits both alike): the median time per
    call of each and the median of the per-round differences, in ns."""
    per_round = CALLS // ROUNDS
    w_rounds, d_rounds, diffs = [], [], []
    for _ in range(ROUNDS):
        w = _round_ns(wrapped, args, per_round)
        d = _round_ns(direct, args, per_round)
        w_rounds.append(w)
        d_rounds.append(d)
        diffs.append(w - d)
    return statistics.median(w_rounds), statistics.median(d_rounds), statistics.median(diffs)


def compile_phase(base: Path, adaptors: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    warm = make_adaptor("inductor")
    warm.initialize_cache(base / "warmup")
    t0 = time.perf_counter()
    warm.compile(torch.fx.symbolic_trace(f), _inputs(1), {})
    warm.close()
    out["first_compile_in_process_s"] = time.perf_counter() - t0
    for name in adaptors:
        with make_adaptor(name) as adaptor:
            adaptor.initialize_cache(base / name)
            times, handles = [], []
            for i in range(GRAPHS):
                gm = _graph(name, i)
                t0 = time.perf_counter()
                _fn, handle = adaptor.compile(gm, _inputs(_batch(name, i)), {}, runtime_shape=None)
                times.append(time.perf_counter() - t0)
                handles.append(handle.to_json() if handle else None)
            out[name] = {"compile_s": times, "handles": handles}
    return out


def load_phase(base: Path, adaptors: list[str], compiled: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    torchshim.warm_up()
    out: dict[str, Any] = {"cpu_warm_up_s": time.perf_counter() - t0}
    for name in adaptors:
        with make_adaptor(name) as adaptor:
            adaptor.initialize_cache(base / name)
            times = []
            first_call = None
            for i, raw in enumerate(compiled[name]["handles"]):
                gm = _graph(name, i)
                args = _inputs(_batch(name, i))
                t0 = time.perf_counter()
                fn = adaptor.load(handle_from_json(raw), gm, args, i)
                fn(*args)
                times.append(time.perf_counter() - t0)
                first_call = first_call or fn
            # overhead: the returned callable vs what it wraps
            args = _inputs(_batch(name, 0))
            gm = _graph(name, 0)
            fn = adaptor.load(handle_from_json(compiled[name]["handles"][0]), gm, args, 0)
            inner = _direct(name, adaptor, compiled[name]["handles"][0], args, gm)
            wrapped_ns, direct_ns, overhead_ns = _paired_ns(fn, inner, args)
            out[name] = {
                "first_load_s": times[0],
                "load_s": times[1:],
                "wrapped_call_ns": wrapped_ns,
                "direct_call_ns": direct_ns,
                "overhead_ns": overhead_ns,
            }
    return out


def _direct(name: str, adaptor: Any, raw: str, args: list[Any], gm: Any) -> Any:
    """Inductor's own artifact, called the way it is called without torchshim (read straight
    from its cache-store entry, no verified copy)."""
    shim = active().module
    handle: Any = handle_from_json(raw)
    entry = adaptor.store.entry_dir(handle.entry)
    if name == "inductor":
        with shim.private_kernel_cache(str(entry)), shim.shape_env_stand_in():
            compiled = shim.lookup_fx_graph(handle.key, args, gm)

        def boxed(*a: Any) -> Any:
            return compiled(list(a))

        return boxed
    with shim.private_kernel_cache(str(entry)):
        return shim.load_compiled_artifact(str(entry / handle.path), handle.artifact_format)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    parser.add_argument("--phase", choices=["all", "load"], default="all")
    parser.add_argument("--base", default=None)
    args = parser.parse_args()
    adaptors = ["inductor"]
    if "supports_standalone_compile" in torchshim.capabilities():
        adaptors.append("inductor_standalone")
    if args.phase == "load":  # the fresh process
        base = Path(args.base)
        compiled = json.loads((base / "compiled.json").read_text())
        print(json.dumps(load_phase(base, adaptors, compiled)))
        return 0
    base = Path(tempfile.mkdtemp(prefix="torchshim-bench-"))
    t0 = time.perf_counter()
    compiled = compile_phase(base, adaptors)
    compile_process_s = time.perf_counter() - t0
    (base / "compiled.json").write_text(json.dumps(compiled))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", "load", "--base", str(base)],
        capture_output=True,
        text=True,
        check=True,
    )
    load_process_s = time.perf_counter() - t0
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    series = str(torchshim.torch_series())
    rows = []
    for name in adaptors:
        c = statistics.median(compiled[name]["compile_s"])
        lo = statistics.median(loaded[name]["load_s"])
        overhead = loaded[name]["overhead_ns"]
        rows.append(
            {
                "adaptor": name,
                "compile_s_median": round(c, 4),
                "load_s_median": round(lo, 4),
                "load_over_compile": round(lo / c, 4),
                "first_load_in_process_s": round(loaded[name]["first_load_s"], 3),
                "direct_call_us": round(loaded[name]["direct_call_ns"] / 1000, 3),
                "wrapped_call_us": round(loaded[name]["wrapped_call_ns"] / 1000, 3),
                "overhead_us": round(overhead / 1000, 3),
            }
        )
    result = {
        "torch": installed_torch_version(),
        "series": series,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "graphs_per_adaptor": GRAPHS,
        "first_compile_in_process_s": round(compiled["first_compile_in_process_s"], 2),
        "cpu_warm_up_in_fresh_process_s": round(loaded["cpu_warm_up_s"], 2),
        "compile_process_s": round(compile_process_s, 1),
        "load_process_s": round(load_process_s, 1),
        "rows": rows,
    }
    head = [
        "adaptor",
        "compile s",
        "load s",
        "load/compile",
        "1st load s",
        "direct µs",
        "wrapped µs",
        "overhead µs",
    ]
    print(f"torch {result['torch']} (series {series}), {GRAPHS} graphs per adaptor, median")
    print(" | ".join(head))
    for r in rows:
        print(
            " | ".join(
                str(r[k])
                for k in (
                    "adaptor",
                    "compile_s_median",
                    "load_s_median",
                    "load_over_compile",
                    "first_load_in_process_s",
                    "direct_call_us",
                    "wrapped_call_us",
                    "overhead_us",
                )
            )
        )
    out = Path(args.out or f"benchmarks/results/adaptors-{series}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
