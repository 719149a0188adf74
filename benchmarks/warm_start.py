"""Warm start against the floor, cold start and plain torch.compile, each in a fresh process.

    python benchmarks/warm_start.py [--device cpu|cuda] [--models demo,gpt2] [--sizes 1,2,4,8]

For each model: the floor (a process that imports torch and torchshim, builds the model and runs
it once eagerly); ``torchshim.compile`` cold (empty cache) and warm; plain ``torch.compile`` with
its own caches, cold (empty TORCHINDUCTOR_CACHE_DIR) and warm (the same directory again), with a
dynamic batch (``plain``) and static per size (``plain-static``: one graph per served size, what a
user gets without marking anything dynamic), and on a GPU max-autotune; torch's mega-cache
(``save_cache_artifacts`` / ``load_cache_artifacts``) where the installed torch has it. Each run
is a fresh process, timed from its start to every served size having run once ("all ready"),
with torchshim's per-phase seconds (saved-trace load, graph loads, verification, Dynamo, CUDA
capture). Python's bytecode is compiled first (``compileall``), as a user's install has it. Also:
the dispatcher's cost per call, and on a GPU the steady-state time per served size. Prints tables
and writes JSON to benchmarks/results/warm_start-<device>-<torch>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VOCAB = {"demo": 512, "gpt2": 96}
SEQ = {"demo": 16, "gpt2": 32}


def build(name: str, device: str) -> Any:
    import torch

    if name == "demo":
        from torchshim.demo import build_model

        return build_model(device)
    import transformers

    config = transformers.GPT2Config(
        n_layer=4, n_embd=256, n_head=8, vocab_size=VOCAB[name], n_positions=64,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).to(device).eval()


def tokens(name: str, batch: int, device: str) -> Any:
    import torch

    gen = torch.Generator().manual_seed(batch)
    return torch.randint(0, VOCAB[name], (batch, SEQ[name]), generator=gen).to(device)


def logits(out: Any) -> Any:
    return out if hasattr(out, "shape") else out.logits


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process: build, compile (or load), first result, then steady state."""
    t_spawn = args.spawned_at
    import torch

    import torchshim

    t_import = time.time()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = build(args.model, args.device)
    probe = tokens(args.model, max([2, *sizes]), args.device)
    record: dict[str, Any] = {"kind": args.kind, "phase": args.phase, "model": args.model}
    shim = torchshim.shims.active().module
    if args.kind == "megacache" and args.phase == "warm":
        blob = Path(args.cache, "mega.bin").read_bytes()
        torch.compiler.load_cache_artifacts(blob)
    backend: Any = None
    if args.kind == "floor":
        compiled = model
    elif args.kind == "torchshim":
        compiled = torchshim.compile(model, Path(args.cache) / "torchshim", compile_sizes=sizes)
        backend = compiled.backend
    elif args.kind == "plain-max-autotune":
        compiled = torch.compile(model, mode="max-autotune")
    elif args.kind == "plain-static":
        compiled = torch.compile(model, dynamic=False)
    else:
        compiled = torch.compile(model)
    with torch.no_grad():
        if args.kind in ("plain", "plain-max-autotune", "megacache"):
            shim.mark_dynamic(probe, 0)
        # torchshim's Dynamo settings for the compiled runs; not for the floor, where importing
        # Dynamo (torch._dynamo.config: about 1.2 s here) would be counted in the floor
        settings = torchshim.capture_config() if args.kind != "floor" else contextlib.nullcontext()
        with settings:
            first = logits(compiled(probe)).clone()  # CUDA graphs reuse their output buffers
        _sync(args.device)
        t_ready = time.time()
        # every served size once (plain torch.compile compiles lazily: this is its "ready")
        for size in sizes:
            logits(compiled(tokens(args.model, size, args.device)))
        _sync(args.device)
        t_all = time.time()
        if args.kind == "megacache" and args.phase == "cold":
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is not None:
                Path(args.cache, "mega.bin").write_bytes(artifacts[0])
        err = float((first - logits(model(probe))).abs().max())
        steady: dict[str, float] = {}
        if args.steady:
            for size in sizes:
                x = tokens(args.model, size, args.device)
                steady[str(size)] = _time_call(lambda x=x: compiled(x), args.device)
                if args.kind == "torchshim":
                    steady[f"eager-{size}"] = _time_call(lambda x=x: model(x), args.device)
    record.update(
        import_s=round(t_import - t_spawn, 3),
        start_to_first_result_s=round(t_ready - t_spawn, 3),
        start_to_all_ready_s=round(t_all - t_spawn, 3),
        max_err=err,
        steady_us=steady,
        stats=backend.stats.as_dict() if backend else None,
    )
    return record


def _time_call(fn: Any, device: str, repeat: int = 30) -> float:
    import torch

    step = getattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    for _ in range(3):
        step()
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        step()
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e6, 2)


def dispatch_overhead() -> dict[str, float]:
    """Median per-call cost of the backend's dispatcher over calling the artifact directly."""
    import timeit

    import torch

    from torchshim.serving import BatchLayout, ServingStats, make_dispatcher

    x = torch.zeros(4, 8)

    def artifact(*args: Any) -> Any:
        return args

    dispatch = make_dispatcher(
        {None: artifact, 2: artifact, 4: artifact}, BatchLayout(position=(0, 0)), ServingStats()
    )
    rounds = []
    for _ in range(21):
        direct = timeit.timeit(lambda: artifact(x), number=20000) / 20000
        routed = timeit.timeit(lambda: dispatch(x), number=20000) / 20000
        rounds.append((routed - direct) * 1e6)
    return {"dispatch_overhead_us": round(statistics.median(rounds), 3)}


def run(kind: str, phase: str, model: str, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    # plain torch.compile's own caches; the mega-cache's warm start begins with empty ones (as on
    # another machine) and fills them from the saved artifacts
    own = "mega-warm" if kind == "megacache" and phase == "warm" else "own"
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / f"inductor-{own}")
    env["TRITON_CACHE_DIR"] = str(cache / f"triton-{own}")
    command = [
        sys.executable, str(Path(__file__)), "worker", "--kind", kind, "--phase", phase,
        "--model", model, "--device", args.device, "--sizes", args.sizes, "--cache", str(cache),
        "--spawned-at", repr(time.time()),
    ]  # fmt: skip
    if args.device == "cuda" and phase == "warm":
        command.append("--steady")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"kind": kind, "phase": phase, "model": model, "error": proc.stderr[-1500:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", default="demo,gpt2")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--kind", default="torchshim")
    parser.add_argument("--kinds", default="", help="only these runs (comma-separated)")
    parser.add_argument("--phase", default="cold")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--cache", default="")
    parser.add_argument("--spawned-at", type=float, default=0.0)
    parser.add_argument("--steady", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--repeat", type=int, default=3, help="warm starts per run (median)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.mode == "worker":
        print(json.dumps(worker(args)))
        return 0
    import torch

    import torchshim

    compile_bytecode()
    kinds = ["floor", "torchshim", "plain", "plain-static"]
    if args.device == "cuda":
        kinds.append("plain-max-autotune")
    if hasattr(torch.compiler, "save_cache_artifacts"):
        kinds.append("megacache")
    if args.kinds:
        kinds = [k for k in kinds if k in args.kinds.split(",")]
    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
            # one start not reported: every run after it finds torch's and the model package's
            # files in the page cache, as a serving machine's second start does
            run("floor", "cold", model, Path(tmp), args)
        for kind in kinds:
            with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
                for phase in ("cold",) if kind == "floor" else ("cold", "warm"):
                    # a start is noisy (±0.5 s here): warm starts (and the floor) run --repeat
                    # times, the median one reported, every time kept
                    times = args.repeat if kind == "floor" or phase == "warm" else 1
                    records = [run(kind, phase, model, Path(tmp), args) for _ in range(times)]
                    good = [r for r in records if "error" not in r]
                    good.sort(key=lambda r: r["start_to_all_ready_s"])
                    record = good[len(good) // 2] if good else records[0]
                    record["repeats"] = [r["start_to_all_ready_s"] for r in good]
                    rows.append(record)
                    print(json.dumps({k: v for k, v in record.items() if k != "error"}), flush=True)
                    if "error" in record:
                        print(record["error"], file=sys.stderr)
    overhead = dispatch_overhead()
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torchshim._version.installed_torch_version(),
        "python": platform.python_version(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "triton": _triton_version(),
        "sizes": args.sizes,
        "repeat": args.repeat,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"warm_start-{args.device}-{torchshim.torch_series()}.json"
    path.write_text(json.dumps({"meta": meta, "runs": rows, **overhead}, indent=1))
    print()
    print(table(rows, meta, overhead))
    print(f"\nwrote {path}")
    return 0


def compile_bytecode() -> None:
    """Compile the bytecode of torch, its dependencies and torchshim once (a user's pip install
    has it; this machine sets PYTHONDONTWRITEBYTECODE), so no run pays for it."""
    import sysconfig

    paths = [sysconfig.get_paths()["purelib"], str(ROOT / "src")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *paths],
        env=env,
        check=False,
        capture_output=True,
    )


def _triton_version() -> str | None:
    try:
        import triton

        return str(triton.__version__)
    except ImportError:
        return None


PHASES = ("program_s", "load_s", "verify_s", "dynamo_s", "capture_s")


def table(rows: list[dict[str, Any]], meta: dict[str, Any], overhead: dict[str, float]) -> str:
    lines = [
        f"{meta['date']}, {meta['device']} ({meta['gpu'] or meta['machine']}, {meta['cpus']} cores), "
        f"torch {meta['torch']}, Triton {meta['triton']}, served sizes {meta['sizes']}",
        "",
        f"Warm s: the median of {meta.get('repeat', 1)} warm starts (the floor likewise), their "
        "range beside it; the phases are the median start's.",
        "",
        "| model | run | cold s | warm s | warm range s | warm − floor s | warm / best plain warm | "
        "import s | saved trace s | graph loads s | verify s | Dynamo s | capture s | "
        "compiled (warm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["kind"], r["phase"]): r for r in rows}
    models = sorted({r["model"] for r in rows})
    order = ["floor", "torchshim", "plain", "plain-static", "plain-max-autotune", "megacache"]
    kinds = sorted({r["kind"] for r in rows}, key=order.index)
    for model in models:
        floor = by.get((model, "floor", "cold"), {}).get("start_to_all_ready_s")
        plains = [
            by.get((model, k, "warm"), {}).get("start_to_all_ready_s")
            for k in ("plain", "plain-static", "plain-max-autotune")
        ]
        best = min((p for p in plains if p), default=None)
        for kind in kinds:
            cold, warm = by.get((model, kind, "cold"), {}), by.get((model, kind, "warm"), {})
            c, w = cold.get("start_to_all_ready_s"), warm.get("start_to_all_ready_s")
            spread = (cold if kind == "floor" else warm).get("repeats") or []
            span = f"{min(spread)}–{max(spread)}" if len(spread) > 1 else "-"
            if kind == "floor":
                w = c
            over = f"{w - floor:.2f}" if w is not None and floor else "-"
            ratio = f"{100 * w / best:.0f}%" if w and best and kind != "floor" else "-"
            phases = ((warm.get("stats") or {}).get("phases")) or {}
            shown = [str(phases.get(p, "-")) for p in PHASES]
            compiled = (warm.get("stats") or {}).get("compiled", "-")
            lines.append(
                f"| {model} | {kind} | {c if c is not None else 'error'} | "
                f"{w if w is not None else 'error'} | {span} | {over} | {ratio} | "
                f"{warm.get('import_s', cold.get('import_s', '-'))} | {' | '.join(shown)} | "
                f"{compiled} |"
            )
    lines.append("")
    lines.append(
        f"Dispatch overhead per call: {overhead['dispatch_overhead_us']} µs (median of 21 rounds)."
    )
    steady = [(r["model"], r["kind"], r["steady_us"]) for r in rows if r.get("steady_us")]
    if steady:
        lines += ["", "| model | run | steady-state µs per served size |", "|---|---|---|"]
        for model, kind, values in steady:
            shown = ", ".join(f"{k}: {v}" for k, v in values.items())
            lines.append(f"| {model} | {kind} | {shown} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
