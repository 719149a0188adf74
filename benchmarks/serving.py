"""Serving speed per batch size: torchshim with CUDA graphs on and off, plain
``torch.compile(mode="max-autotune")`` and eager, side by side in one warm process.

    python benchmarks/serving.py [--device cuda] [--models decoder,demo,gpt2] [--sizes 1,2,4,8]

A first process (cold) fills torchshim's cache and plain torch.compile's own caches; a second,
fresh process (warm) loads everything and times, for every batch size from 1 to the largest served
size (served sizes and the sizes between them), microseconds per call of:

* torchshim, CUDA graphs on, padding on (sizes between served ones run the next served size);
* torchshim, CUDA graphs off (the same loaded artifacts, no padding: sizes between run the
  general graph);
* plain ``torch.compile(mode="max-autotune")`` (its own CUDA graphs; Dynamo's automatic dynamic
  batch after the second size), warm from its cache;
* eager.

Each figure is the median of five timed loops of 100 calls (CUDA synchronised around each loop)
after warm-up calls, all four measured in turn per size in the same process. Also: the warm start's
capture seconds and the memory the graphs reserved. Prints a table and writes JSON to
benchmarks/results/serving-<device>-<torch>.json.
"""

from __future__ import annotations

import argparse
import copy
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
D_MODEL, SEQ_LEN, LAYERS, HEADS = 512, 64, 2, 8


def decoder(device: str) -> Any:
    """A Llama-style stack: RMSNorm, causal SDPA with rotary-free heads, SwiGLU; fp16 on CUDA."""
    import torch

    class RMSNorm(torch.nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
            return (x.float() * scale).to(x.dtype) * self.weight

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm, self.mlp_norm = RMSNorm(D_MODEL), RMSNorm(D_MODEL)
            self.qkv = torch.nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
            self.out = torch.nn.Linear(D_MODEL, D_MODEL, bias=False)
            self.gate_up = torch.nn.Linear(D_MODEL, 2 * 4 * D_MODEL, bias=False)
            self.down = torch.nn.Linear(4 * D_MODEL, D_MODEL, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.attn_norm(x)).split(D_MODEL, dim=-1)
            q, k, v = (y.view(b, t, HEADS, -1).transpose(1, 2) for y in (q, k, v))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(b, t, D_MODEL))
            gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
            return x + self.down(torch.nn.functional.silu(gate) * up)

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(Layer() for _ in range(LAYERS)), RMSNorm(D_MODEL)).eval()
    return model.to(device=device, dtype=torch.float16 if device == "cuda" else torch.float32)


GPT2_VOCAB, GPT2_SEQ = 96, 32


def build(name: str, device: str) -> Any:
    if name == "decoder":
        return decoder(device)
    if name == "gpt2":  # transformers' GPT-2, random weights, nothing downloaded
        import torch
        import transformers

        config = transformers.GPT2Config(
            n_layer=4, n_embd=256, n_head=8, vocab_size=GPT2_VOCAB, n_positions=64,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).to(device).eval()
    from torchshim.demo import build_model

    return build_model(device)


def logits(out: Any) -> Any:
    return out if hasattr(out, "shape") else out.logits


def inputs(name: str, batch: int, device: str) -> Any:
    import torch

    gen = torch.Generator().manual_seed(batch)
    if name == "decoder":
        dtype = torch.float16 if device == "cuda" else torch.float32
        return torch.randn(batch, SEQ_LEN, D_MODEL, generator=gen).to(device=device, dtype=dtype)
    if name == "gpt2":
        return torch.randint(0, GPT2_VOCAB, (batch, GPT2_SEQ), generator=gen).to(device)
    from torchshim.demo import SEQ, VOCAB

    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen).to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def per_call_us(fn: Any, x: Any, device: str, calls: int = 100, loops: int = 5) -> float:
    for _ in range(3):
        fn(x)
    samples = []
    for _ in range(loops):
        _sync(device)
        started = time.perf_counter()
        for _ in range(calls):
            fn(x)
        _sync(device)
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import torchshim

    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.cache) / "plain")
    record: dict[str, Any] = {"phase": args.phase, "model": args.model, "rows": []}
    model = build(args.model, args.device)
    started = time.perf_counter()
    shim_on = torchshim.compile(
        copy.deepcopy(model), Path(args.cache) / "torchshim", compile_sizes=sizes, pad_batch=True
    )
    with torch.no_grad():
        shim_on(inputs(args.model, max(3, min(sizes)), args.device))
    _sync(args.device)
    record["torchshim_ready_s"] = round(time.perf_counter() - started, 3)
    stats = shim_on.backend.stats
    record["torchshim_stats"] = stats.as_dict()
    started = time.perf_counter()
    plain = torch.compile(copy.deepcopy(model), mode="max-autotune")
    with torch.no_grad():
        for batch in range(1, max(sizes) + 1):
            plain(inputs(args.model, batch, args.device))
    _sync(args.device)
    record["plain_ready_s"] = round(time.perf_counter() - started, 3)
    if args.phase == "cold":
        return record
    shim_off = torchshim.compile(
        copy.deepcopy(model), Path(args.cache) / "torchshim", compile_sizes=sizes, cudagraphs=False
    )
    with torch.no_grad():
        shim_off(inputs(args.model, max(3, min(sizes)), args.device))
    record["graphs_off_stats"] = shim_off.backend.stats.as_dict()
    contenders = {"torchshim": shim_on, "graphs off": shim_off, "plain max-autotune": plain}
    with torch.no_grad():
        for batch in range(1, max(sizes) + 1):
            x = inputs(args.model, batch, args.device)
            row: dict[str, Any] = {"batch": batch, "served": batch in sizes}
            for name, fn in contenders.items():
                row[name] = round(per_call_us(fn, x, args.device), 1)
            row["eager"] = round(per_call_us(model, x, args.device), 1)
            reference = logits(model(x)).float()
            row["max_err"] = float((logits(shim_on(x)).float() - reference).abs().max())
            record["rows"].append(row)
    record["serving"] = shim_on.backend.stats.serving.as_dict()
    return record


def run_phase(args: argparse.Namespace, model: str, phase: str, cache: str) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--worker", "--phase", phase, "--model", model,
        "--cache", cache, "--device", args.device, "--sizes", args.sizes,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{model} {phase} failed (exit {done.returncode})")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    record["process_s"] = round(time.time() - started, 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="decoder")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="warm", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="decoder", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch

    import torchshim
    from torchshim._version import installed_torch_version

    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/serving.py", *sys.argv[1:]]),
        "torch": installed_torch_version(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "date": time.strftime("%Y-%m-%d"),
        "models": {},
    }
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="torchshim-serving-") as cache:
            cold = run_phase(args, model, "cold", cache)
            print(f"{model}: cold process {cold['process_s']} s", flush=True)
            warm = run_phase(args, model, "warm", cache)
            print(f"{model}: warm process {warm['process_s']} s", flush=True)
        results["models"][model] = {"cold": cold, "warm": warm}
        print(f"\n{model}: µs per call, one warm process (served sizes marked *)")
        print(f"{'batch':>6} {'torchshim':>10} {'graphs off':>11} {'plain m-a':>10} {'eager':>9}"
              f" {'ratio':>6}")  # fmt: skip
        for row in warm["rows"]:
            ratio = row["torchshim"] / row["plain max-autotune"]
            mark = "*" if row["served"] else " "
            print(
                f"{row['batch']:>5}{mark} {row['torchshim']:>10} {row['graphs off']:>11} "
                f"{row['plain max-autotune']:>10} {row['eager']:>9} {ratio:>6.2f}"
            )
        serving = warm["serving"]
        print(
            f"capture: {serving['capture_seconds']} s for {len(serving['captured'])} graph(s), "
            f"{serving['captured_bytes'] / 2**20:.1f} MiB; warm start {warm['torchshim_ready_s']} s "
            f"(plain max-autotune {warm['plain_ready_s']} s); cold {cold['torchshim_ready_s']} s "
            f"(plain {cold['plain_ready_s']} s)"
        )
    out = Path(args.out) if args.out else (
        HERE / "results" / f"serving-{args.device}-{torchshim.torch_series()}.json"
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
