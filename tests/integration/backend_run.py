"""Cold and warm starts through torchshim's backend, shared by the backend tests: process A (the
pytest process) runs :func:`run` in ``cold`` mode; process B runs this file as a script
(``python backend_run.py BASE OUT [MODEL,...]``) in ``warm`` mode and must compile nothing."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torchshim
from tests.integration.roundtrip import CompilerProcessCounter
from torchshim import compile_backend
from torchshim.demo import build_model

SIZES = (2, 4)
BATCHES = (2, 3, 4, 5)  # 3 and 5 are not served: the general graph runs them
#: Inductor's CPU max-autotune benchmarks GEMM templates for every size (about 15 s a graph here);
#: the backend's mechanics do not depend on it, and the adaptors' tests cover it
CONFIG = {"max_autotune": False}


class Broken(torch.nn.Module):
    """Two graphs: a graph break in the middle (a print-free side effect Dynamo cannot trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 64), torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.a(x))
        torch._dynamo.graph_break()
        return self.b(h).softmax(-1) * 0.5


def gpt2() -> torch.nn.Module:
    from tests.integration.engine import build

    return build("gpt2")


def _inputs(name: str, batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + batch)
    if name == "broken":
        return torch.randn(batch, 32, generator=gen)
    vocab = 96 if name == "gpt2" else 512
    return torch.randint(0, vocab, (batch, 16 if name == "demo" else 8), generator=gen)


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "demo": lambda: build_model("cpu"),
    "gpt2": gpt2,
    "broken": lambda: Broken().eval(),
}


def _out(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value.logits


def baseline_graphs(name: str) -> list[int]:
    """Graphs Dynamo hands a do-nothing backend after each batch (graph breaks: a resumed frame
    sees the batch as static first and re-traces once it changes), which torchshim must not add
    to."""
    calls = 0

    def count(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        return gm.forward

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    torch.compiler.reset()
    compiled = torch.compile(model, backend=count)
    after = []
    with torch.no_grad(), torchshim.capture_config():
        for batch in BATCHES:
            x = _inputs(name, batch)
            if batch == BATCHES[0]:
                torch._dynamo.mark_dynamic(x, 0)
            compiled(x)
            after.append(calls)
    return after


def run_one(
    base: Path, name: str, *, rank: int | None = None, by_name: bool = False
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    torch.compiler.reset()
    record: dict[str, Any] = {"error": None, "outputs": {}, "max_err": {}}
    try:
        if by_name:  # torch.compile(model, backend="torchshim"), configured by the environment
            compiled = torch.compile(model, backend="torchshim")
        else:
            compiled = torchshim.compile(
                model, cache_dir=base, compile_sizes=SIZES, rank=rank, compiler_config=CONFIG
            )
        graphs_after = []
        with torch.no_grad():
            for batch in BATCHES:
                x = _inputs(name, batch)
                if by_name and batch == BATCHES[0]:
                    torch._dynamo.mark_dynamic(x, 0)
                    with torchshim.capture_config():
                        got = _out(compiled(x))
                else:
                    got = _out(compiled(x))
                record["outputs"][str(batch)] = got.tolist()
                record["max_err"][str(batch)] = float((got - _out(model(x))).abs().max())
                backend = compile_backend._registered if by_name else compiled.backend
                graphs_after.append(backend.stats.graphs)
        record["graphs_after"] = graphs_after
        record["baseline_graphs_after"] = baseline_graphs(name.split("@", maxsplit=1)[0])
        record["stats"] = backend.stats.as_dict()
        record["events"] = backend.stats.events
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["trace"] = traceback.format_exc()[-3000:]
    return record


def run(base: Path, names: tuple[str, ...] = tuple(MODELS)) -> dict[str, Any]:
    """The models named (every one unless told), plus rank 1 of the broken model, plus the demo
    model by backend name."""
    results = {name: run_one(base, name) for name in names}
    results["broken@rank1"] = run_one(base, "broken", rank=1)
    # by name, configured by the environment, over the same cache: the demo model's entries load
    os.environ["TORCHSHIM_CACHE_DIR"] = str(base)
    os.environ["TORCHSHIM_COMPILE_SIZES"] = ",".join(str(s) for s in SIZES)
    os.environ["TORCHSHIM_COMPILER_CONFIG"] = json.dumps(CONFIG)
    try:
        results["demo@by_name"] = run_one(base, "demo", by_name=True)
    finally:
        for name in ("TORCHSHIM_CACHE_DIR", "TORCHSHIM_COMPILE_SIZES", "TORCHSHIM_COMPILER_CONFIG"):
            del os.environ[name]
        compile_backend._registered = None  # the next user of backend="torchshim" starts afresh
    return results


def main(argv: list[str]) -> int:
    base, out = Path(argv[1]), Path(argv[2])
    names = tuple(argv[3].split(",")) if len(argv) > 3 else tuple(MODELS)
    shim = torchshim.shims.active().module
    t0 = time.perf_counter()
    torchshim.warm_up()
    before = shim.compile_counters()
    counter = CompilerProcessCounter()
    with counter.watching():
        results = run(base, names)
    after = shim.compile_counters()
    out.write_text(
        json.dumps(
            {
                "models": results,
                "kernel_builds": counter.builds,
                "counters": {k: after.get(k, 0) - before.get(k, 0) for k in after},
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
