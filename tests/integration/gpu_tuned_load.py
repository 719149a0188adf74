"""GPU only: does a loaded size-specialised graph re-tune? (research/gpu-autotune-on-load.md)

    python tests/integration/gpu_tuned_load.py OUT_DIR

Graph softmax(gelu(x @ w)), fp16, x (8, 1024), w (1024, 1024), ``compile(..., runtime_shape=8)``
with torchshim's default per-size config and with coordinate-descent tuning added on top (the
reference design's default). Process A compiles and times the steady state; the cache directory
is moved; a fresh process B loads, counts coordinate-descent runs, benchmarking of configs and
``triton.compile`` calls, files written outside the moved cache, and times first call and steady
state. Plain ``torch.compile(mode="max-autotune")`` is timed for comparison. Writes
``gpu_tuned_load.json`` into OUT_DIR and prints a markdown table.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = {
    "torchshim default (max_autotune)": {},
    "max_autotune + coordinate_descent_tuning": {"coordinate_descent_tuning": True},
}
ADAPTORS = ("inductor", "inductor_standalone")


def f(x, w):  # type: ignore[no-untyped-def]
    return torch.softmax(torch.nn.functional.gelu(x @ w), dim=-1)


def inputs() -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 1024, device="cuda", dtype=torch.float16, generator=gen)
    w = torch.randn(1024, 1024, device="cuda", dtype=torch.float16, generator=gen) / 32
    return [x, w]


def steady_us(fn: Any, args: list[torch.Tensor], repeat: int = 200) -> float:
    for _ in range(10):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e6, 2)


def files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def compile_phase(base: Path, adaptor: str, config: dict[str, Any]) -> dict[str, Any]:
    from torchshim.adaptors import make_adaptor

    args = inputs()
    gm = torch.fx.symbolic_trace(f)
    with make_adaptor(adaptor) as ad:
        ad.initialize_cache(base)
        t0 = time.perf_counter()
        fn, handle = ad.compile(gm, args, dict(config), runtime_shape=8, key="tuned")
        compile_s = time.perf_counter() - t0
        assert fn is not None and handle is not None
        first = fn(*args)
        return {
            "handle": handle.to_json(),
            "compile_s": round(compile_s, 2),
            "steady_us": steady_us(fn, args),
            "max_err": float((first.float() - f(*args).float()).abs().max()),
        }


def load_phase(base: Path, old: Path, adaptor: str, handle: str) -> dict[str, Any]:
    import triton
    from torch._inductor.runtime import triton_heuristics

    from torchshim.adaptors import make_adaptor

    counts = {"coordinate_descent": 0, "benchmark_all_configs": 0, "triton.compile": 0}
    tuner = triton_heuristics.CachingAutotuner

    def counted(name: str, original: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            counts[name] += 1
            return original(*a, **k)

        return wrapper

    tuner.coordinate_descent_tuning = counted("coordinate_descent", tuner.coordinate_descent_tuning)
    tuner.benchmark_all_configs = counted("benchmark_all_configs", tuner.benchmark_all_configs)
    triton.compile = counted("triton.compile", triton.compile)
    default_dir = Path(f"/tmp/torchinductor_{os.environ.get('USER', 'root')}")
    outside_before = files(old) | files(default_dir)
    args = inputs()
    gm = torch.fx.symbolic_trace(f)
    with make_adaptor(adaptor) as ad:
        ad.initialize_cache(base)
        t0 = time.perf_counter()
        fn = ad.load(handle, gm, args, 0, runtime_shape=8)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = fn(*args)
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - t0
        steady = steady_us(fn, args)
    written_outside = sorted((files(old) | files(default_dir)) - outside_before)
    return {
        "load_s": round(load_s, 3),
        "first_call_s": round(first_call_s, 4),
        "steady_us": steady,
        "counts": counts,
        "written_outside": written_outside[:10],
        "max_err": float((out.float() - f(*args).float()).abs().max()),
    }


def plain_max_autotune() -> float:
    args = inputs()
    compiled = torch.compile(f, mode="max-autotune")
    return steady_us(compiled, args)


def main(argv: list[str]) -> int:
    if argv[1] == "compile":
        print(json.dumps(compile_phase(Path(argv[2]), argv[3], json.loads(argv[4]))))
        return 0
    if argv[1] == "load":
        print(json.dumps(load_phase(Path(argv[2]), Path(argv[3]), argv[4], argv[5])))
        return 0
    if argv[1] == "plain":
        print(json.dumps({"steady_us": plain_max_autotune()}))
        return 0
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH", "")]
    )

    def call(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results: dict[str, Any] = {"plain_max_autotune_steady_us": call("plain").get("steady_us")}
    work = Path("/tmp/gpu_tuned")
    shutil.rmtree(work, ignore_errors=True)
    for name, config in CONFIGS.items():
        for adaptor in ADAPTORS:
            base = work / f"{adaptor}-{len(config)}" / "cache"
            a = call("compile", str(base), adaptor, json.dumps(config))
            entry = {"A": a}
            if "error" not in a:
                moved = base.parent / "moved"
                base.rename(moved)
                entry["B"] = call("load", str(moved), str(base), adaptor, a["handle"])
            results[f"{name} / {adaptor}"] = entry
            print(name, adaptor, json.dumps(entry)[:600], flush=True)
    (out_dir / "gpu_tuned_load.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| config / adaptor | A compile s | A steady µs | B load s | B first call s | B steady µs "
        "| B coordinate descent | B benchmarks | B triton.compile | B writes outside cache |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        if not isinstance(entry, dict) or "A" not in entry:
            continue
        a, b = entry["A"], entry.get("B", {})
        if "error" in a or "error" in b:
            lines.append(f"| {name} | error: {(a.get('error') or b.get('error'))[-200:]!r} |")
            continue
        c = b["counts"]
        lines.append(
            f"| {name} | {a['compile_s']} | {a['steady_us']} | {b['load_s']} | {b['first_call_s']} "
            f"| {b['steady_us']} | {c['coordinate_descent']} | {c['benchmark_all_configs']} "
            f"| {c['triton.compile']} | {len(b['written_outside'])} |"
        )
    lines.append(
        f"\nplain torch.compile(mode='max-autotune') steady state: "
        f"{results['plain_max_autotune_steady_us']} µs"
    )
    text = "\n".join(lines)
    (out_dir / "gpu_tuned_load.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
