"""``torchshim demo``: a cold start and a warm start of a small transformer, each in a fresh
process, through torchshim's backend; what each phase cost, what was compiled and loaded, and
whether the outputs match eager.

The worker (``python -m torchshim _demo-worker ...``) prints progress on stderr and one JSON line
on stdout; :func:`run_demo` starts it twice and returns both records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoResult", "build_model", "run_demo", "worker_main"]

VOCAB = 512
SEQ = 16
TOLERANCE = {"cpu": 1e-4, "cuda": 2e-2}
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "clang++", "nvcc", "ptxas")


def build_model(device: str = "cpu", dim: int = 128, heads: int = 4, layers: int = 2) -> Any:
    """The built-in model: a small decoder block stack (embedding, attention with a Python-float
    scale, layer norm, GELU MLP, tensor-method reshapes), random weights."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.heads, self.scale = heads, (dim // heads) ** -0.5

        def forward(self, x: torch.Tensor) -> Any:
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * self.scale
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            x = x + self.out((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.mlp(self.ln2(x))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.pos = nn.Embedding(VOCAB, dim), nn.Parameter(torch.zeros(SEQ, dim))
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, VOCAB, bias=False)

        def forward(self, tokens: torch.Tensor) -> Any:
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    torch.manual_seed(0)
    return Model().to(device).eval()


def tokens(batch: int, device: str) -> Any:
    import torch

    gen = torch.Generator().manual_seed(1000 + batch)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen).to(device)


@contextlib.contextmanager
def _count_builds() -> Iterator[list[str]]:
    """Compiler processes that write an output file (C++ kernel builds, Triton's ptxas)."""
    from torchshim._patching import patch_attr

    builds: list[str] = []
    original = subprocess.Popen.__init__

    def init(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [str(a) for a in (args if isinstance(args, (list, tuple)) else str(args).split())]
        if argv and os.path.basename(argv[0]) in COMPILERS and "-o" in argv and "-E" not in argv:
            builds.append(" ".join(argv)[:200])
        original(self, args, *rest, **kwargs)

    with patch_attr(subprocess.Popen, "__init__", init):
        yield builds


def worker_main(argv: Sequence[str]) -> dict[str, Any]:
    """One start of the demo model (cold or warm); its record (``torchshim _demo-worker`` prints
    it as one JSON line)."""
    parser = argparse.ArgumentParser(prog="torchshim _demo-worker")
    parser.add_argument("--phase", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--adaptor", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spawned-at", type=float, default=None)
    args = parser.parse_args(argv)
    spawned = args.spawned_at or time.time()
    import logging

    logging.basicConfig(level=logging.WARNING, format="  %(message)s", stream=sys.stderr)
    logging.getLogger("torchshim.compile_backend").setLevel(logging.INFO)

    t0 = time.time()
    import torch

    import torchshim
    from torchshim._version import installed_torch_version
    from torchshim.compile_backend import Backend

    imported = time.time()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    model = build_model(args.device)
    compiled: Any = torchshim.compile(
        model, cache_dir=args.cache_dir, compile_sizes=sizes, adaptor=args.adaptor
    )
    backend: Backend = compiled.backend
    shim = torchshim.shims.active().module
    before = shim.compile_counters()
    # trace with a batch Dynamo keeps symbolic (it specialises 0 and 1)
    probe = tokens(max([2, *sizes]), args.device)
    with _count_builds() as builds, torch.no_grad():
        first = compiled(probe)
        if args.device == "cuda":
            torch.cuda.synchronize()
        ready = time.time()
        errors = {}
        for batch in [*sizes, max(sizes, default=2) + 1]:
            x = tokens(batch, args.device)
            errors[str(batch)] = float((compiled(x) - model(x)).abs().max())
    after = shim.compile_counters()
    counters = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    record = {
        "phase": args.phase,
        "device": args.device,
        "adaptor": args.adaptor,
        "torch": installed_torch_version(),
        "sizes": sizes,
        "import_s": round(imported - t0, 3),
        "start_to_ready_s": round(ready - spawned, 3),
        "backend_s": round(backend.stats.seconds, 3),
        "first_result_shape": list(first.shape),
        "max_err": errors,
        "stats": backend.stats.as_dict(),
        "builds": len(builds),
        "fx_misses": counters.get("inductor.fxgraph_cache_miss", 0),
        "events": backend.stats.events,
    }
    return record


@dataclass
class DemoResult:
    cold: dict[str, Any]
    warm: dict[str, Any]
    ok: bool
    problems: list[str]


def _run_worker(
    phase: str,
    cache_dir: Path,
    sizes: Sequence[int],
    adaptor: str,
    device: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    command = [
        sys.executable,
        "-m",
        "torchshim",
        "_demo-worker",
        "--phase",
        phase,
        "--cache-dir",
        str(cache_dir),
        "--sizes",
        ",".join(str(s) for s in sizes),
        "--adaptor",
        adaptor,
        "--device",
        device,
        "--spawned-at",
        repr(time.time()),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    if proc.stderr is not None:
        for line in proc.stderr:
            progress(line.rstrip())
    out = proc.stdout.read() if proc.stdout is not None else ""
    code = proc.wait()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"the {phase} start failed (exit {code}); see its output above")
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def run_demo(
    cache_dir: Path,
    sizes: Sequence[int],
    adaptor: str = "auto",
    device: str = "cpu",
    progress: Callable[[str], None] = lambda line: None,
) -> DemoResult:
    """A cold start into an empty ``cache_dir``, then a warm start from it, each a fresh process."""
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, mode=0o700)
    records = {}
    for phase in ("cold", "warm"):
        progress(f"[{phase} start: a fresh process]")
        records[phase] = _run_worker(phase, cache_dir, sizes, adaptor, device, progress)
    problems = []
    tolerance = TOLERANCE.get(device, 1e-3)
    for phase, record in records.items():
        worst = max(record["max_err"].values())
        if worst > tolerance:
            problems.append(f"{phase} outputs differ from eager by {worst:.3g} (> {tolerance})")
    warm = records["warm"]
    if warm["stats"]["compiled"] or warm["builds"] or warm["fx_misses"]:
        problems.append(
            f"the warm start compiled: {warm['stats']['compiled']} graph(s), "
            f"{warm['builds']} kernel build(s), {warm['fx_misses']} FX-graph-cache miss(es)"
        )
    return DemoResult(records["cold"], records["warm"], not problems, problems)
