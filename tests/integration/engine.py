"""A test engine: what an inference engine does with torchshim's adaptors inside its own Dynamo
backend, on models from third-party packages (random weights, nothing downloaded).

For every graph Dynamo hands the backend, the engine compiles the general graph and one graph per
served batch size (``compile`` mode, process A) or loads them all from its index (``load`` mode,
process B), and returns a dispatcher: a served batch size runs its own artifact, any other the
general one. Process B runs this file as a script: ``python engine.py load BASE INDEX OUT
[SPEC]`` (SPEC: a JSON file naming the cases and sizes, when not the default ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import torchshim
from torchshim.adaptors import graph_digest, graph_inputs, make_adaptor

if __package__ in (None, ""):  # run as a script (process B): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.roundtrip import CompilerProcessCounter, _files

SIZES = (2, 4)  # served batch sizes, compiled up front
GENERAL = "general"  # index marker: a size that could not be specialised runs the general graph
BATCHES = (2, 3, 4)  # what each process runs: 3 is not served (general artifact, no re-trace)
SEQ = 8
VOCAB = 96
#: where the models run (the GPU round trip sets TORCHSHIM_TEST_DEVICE=cuda)
DEVICE = os.environ.get("TORCHSHIM_TEST_DEVICE", "cpu")


def gpt2() -> torch.nn.Module:
    """Hugging Face GPT-2: attention with a Python-float scale, layer norm, GELU (tanh
    approximation), `.view`/`.transpose`/`.split` calls; a 2-layer, 64-wide config."""
    import transformers

    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def x_transformer() -> torch.nn.Module:
    """lucidrains' x-transformers decoder: einops rearranges, a float attention scale, layer norm,
    GELU feed-forward."""
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=32, attn_layers=Decoder(dim=64, depth=2, heads=4)
    )


MODELS: dict[str, Callable[[], torch.nn.Module]] = {"gpt2": gpt2, "x_transformer": x_transformer}
if os.environ.get("TORCHSHIM_TEST_MODELS"):  # a subset, for a short GPU lease
    MODELS = {k: v for k, v in MODELS.items() if k in os.environ["TORCHSHIM_TEST_MODELS"]}
#: Dynamo's capture per model, the same in both processes: Dynamo's defaults (Python floats
#: traced as inputs; the adaptors have Dynamo re-trace with them specialised) or
#: torchshim.capture_config() (specialised from the start).
CAPTURE = {"gpt2": False, "x_transformer": True}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval().to(DEVICE)


def tokens(batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen).to(DEVICE)


def logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def adaptors() -> tuple[str, ...]:
    names = ("inductor", "inductor_standalone")
    if "supports_standalone_compile" not in torchshim.capabilities():
        names = ("inductor",)
    wanted = os.environ.get("TORCHSHIM_TEST_ADAPTORS")  # a subset, for a short GPU lease
    return tuple(n for n in names if not wanted or n in wanted.split(","))


def graph_key(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> str:
    # the code with its size symbols renamed by position: Dynamo may name them differently in
    # another process (its profile-guided dynamic shapes trace frames in another order)
    return graph_digest(gm, example_inputs)[:24]


class Engine:
    """The backend an engine would write. ``index`` maps graph key -> shape label -> handle."""

    def __init__(
        self,
        adaptor: Any,
        mode: str,
        index: dict[str, dict[str, str | None]],
        sizes: tuple[int, ...] = SIZES,
    ) -> None:
        self.adaptor, self.mode, self.index, self.sizes = adaptor, mode, index, sizes
        self.calls = 0
        self.restarts = 0  # backend calls that ended in Dynamo's request to re-trace
        self.graphs: list[str] = []
        self.misses: list[str] = []  # graphs a loading process had to compile
        self.ran: dict[str, int] = {}

    def backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.calls += 1
        try:
            return self._backend(gm, example_inputs)
        except torchshim.shims.active().module.dynamo_control_flow():
            self.restarts += 1
            raise

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graph_index = len(self.graphs)
        key = graph_key(gm, example_inputs)
        entries = dict(self.index.get(key, {}))
        variants: dict[int | None, Any] = {}
        for shape in (None, *self.sizes):
            label = "general" if shape is None else str(shape)
            recorded = entries.get(label) if self.mode == "load" else None
            if recorded == GENERAL:  # this size could not be specialised: the general one serves
                continue
            if recorded is not None:
                fn = self.adaptor.load(recorded, gm, example_inputs, graph_index, shape)
            else:  # a miss: compile (a graph with Python-float inputs asks Dynamo to re-trace)
                fn, handle = self.adaptor.compile(
                    gm, example_inputs, {}, shape, key=f"{key}-{label}"
                )
                if self.mode == "load":
                    self.misses.append(f"{key}:{label}")
                if fn is None and shape is not None:
                    entries[label] = GENERAL  # e.g. other inputs' sizes depend on the batch
                    continue
                if fn is None:
                    raise RuntimeError(f"graph {key} ({label}) did not compile")
                entries[label] = handle.to_json() if handle else None
            variants[shape] = self._counted(fn, f"{graph_index}:{label}")
        self.index[key] = entries
        self.graphs.append(key)
        return dispatcher(variants, graph_inputs(gm, example_inputs).batch_position)

    def _counted(self, fn: Any, name: str) -> Any:
        def run(*args: Any) -> Any:
            self.ran[name] = self.ran.get(name, 0) + 1
            return fn(*args)

        return run


def dispatcher(variants: dict[int | None, Any], position: tuple[int, int | None] | None) -> Any:
    general = variants[None]
    if position is None:
        return general
    index, dim = position
    sized = {k: v for k, v in variants.items() if k is not None}
    if dim is None:
        return lambda *args: sized.get(args[index], general)(*args)
    return lambda *args: sized.get(args[index].shape[dim], general)(*args)


@contextlib.contextmanager
def capture(on: bool) -> Iterator[None]:
    with torchshim.capture_config() if on else contextlib.nullcontext():
        yield


#: how Dynamo is told the batch varies: "mark" (mark_dynamic on the batch dimension, as engines
#: do) or "dynamic" (torch.compile(..., dynamic=True): every size symbolic, ints too)
MARKINGS = ("mark", "dynamic")


def case_name(adaptor: str, model: str, marking: str = "mark") -> str:
    return f"{adaptor}/{model}" + ("" if marking == "mark" else f"+{marking}")


def compiled_model(model: torch.nn.Module, backend: Any, marking: str) -> Any:
    torch.compiler.reset()
    return torch.compile(model, backend=backend, dynamic=True if marking == "dynamic" else None)


def batch_tokens(batch: int, marking: str) -> torch.Tensor:
    ids = tokens(batch)
    if marking == "mark":  # the batch is the one dynamic dimension, as engines mark it
        torch._dynamo.mark_dynamic(ids, 0)
    return ids


def baseline_calls(model_name: str, marking: str = "mark") -> list[int]:
    """How many graphs Dynamo hands a do-nothing backend after each batch: its own re-traces
    (graph breaks make inner frames see the batch as static first, and re-trace when it
    changes), which torchshim's engine must not add to."""
    calls = 0

    def count(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        return gm.forward

    compiled = compiled_model(build(model_name), count, marking)
    after = []
    with torch.no_grad(), capture(CAPTURE[model_name]):
        for batch in BATCHES:
            compiled(batch_tokens(batch, marking))
            after.append(calls)
    return after


#: x-transformers (captured under torchshim.capture_config) runs in the full env and on the GPU;
#: the first series of the other shim modules run GPT-2 alone (CI time)
EVERY_MODEL = os.environ.get("TORCHSHIM_FULL", "").strip() == "1" or DEVICE != "cpu"


def cases() -> list[tuple[str, str]]:
    """(adaptor, model) pairs: GPT-2 through every caching adaptor, x-transformers through the
    newest one where :data:`EVERY_MODEL` (CI time: each pair is three compiles)."""
    pairs = [(a, "gpt2") for a in adaptors() if "gpt2" in MODELS]
    if "x_transformer" in MODELS and adaptors() and EVERY_MODEL:
        pairs.append((adaptors()[-1], "x_transformer"))
    return pairs


def run(
    base: Path,
    mode: str,
    index: dict[str, Any],
    spec: list[tuple[str, str, str]] | None = None,
    sizes: tuple[int, ...] = SIZES,
) -> dict[str, Any]:
    """Every (adaptor, model, marking) of ``spec`` (default: :func:`cases`, batch marked) in one
    process; returns what happened, for the tests to judge."""
    wanted = spec if spec is not None else [(a, m, "mark") for a, m in cases()]
    results: dict[str, Any] = {}
    baselines = {(m, k): baseline_calls(m, k) for _, m, k in wanted}
    for adaptor_name in dict.fromkeys(a for a, _, _ in wanted):
        with make_adaptor(adaptor_name) as adaptor:
            adaptor.initialize_cache(base / adaptor_name, prefix=adaptor_name)
            for _, model_name, marking in [c for c in wanted if c[0] == adaptor_name]:
                name = case_name(adaptor_name, model_name, marking)
                entry: dict[str, Any] = {"error": None, "max_err": {}}
                engine = Engine(adaptor, mode, index.setdefault(name, {}), sizes)
                t0 = time.perf_counter()
                try:
                    model = build(model_name)
                    compiled = compiled_model(model, engine.backend, marking)
                    with torch.no_grad(), capture(CAPTURE[model_name]):
                        for batch in BATCHES:
                            ids = batch_tokens(batch, marking)
                            got, want = logits(compiled(ids)), logits(model(ids))
                            entry["max_err"][str(batch)] = float((got - want).abs().max())
                            entry.setdefault("calls_after", []).append(engine.calls)
                            entry.setdefault("restarts_after", []).append(engine.restarts)
                except Exception as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:3000]
                    entry["trace"] = traceback.format_exc()[-3000:]
                entry.update(
                    baseline_calls_after=baselines[(model_name, marking)],
                    seconds=round(time.perf_counter() - t0, 2),
                    backend_calls=engine.calls,
                    restarts=engine.restarts,
                    misses=engine.misses,
                    graphs=engine.graphs,
                    ran=engine.ran,
                )
                results[name] = entry
    return results


def load_process(
    base: Path,
    index: dict[str, Any],
    spec: list[tuple[str, str, str]] | None = None,
    sizes: tuple[int, ...] = SIZES,
) -> dict[str, Any]:
    """Process B: load everything, counting compiles of every kind."""
    shim = torchshim.shims.active().module
    torchshim.warm_up()  # the one-time CPU ISA probe (builds test programs where not recorded)
    before = shim.compile_counters()
    triton_before = _files(base / "triton")
    counter = CompilerProcessCounter()
    with counter.watching():
        results = run(base, "load", index, spec, sizes)
    after = shim.compile_counters()
    return {
        "models": results,
        "kernel_builds": counter.builds,
        "new_triton_files": sorted(_files(base / "triton") - triton_before)[:20],
        "counters": {k: after.get(k, 0) - before.get(k, 0) for k in after},
    }


def check_ran(entry: dict[str, Any], tolerance: float) -> None:
    """A case of :func:`run` ran without error, every batch within ``tolerance`` of eager, and
    no batch made Dynamo re-trace more than it does for a do-nothing backend (the only extra
    backend calls are those asking Dynamo to specialise Python floats)."""
    assert entry["error"] is None, entry.get("trace") or entry["error"]
    assert set(entry["max_err"]) == {str(b) for b in BATCHES}
    assert max(entry["max_err"].values()) <= tolerance, entry["max_err"]
    calls = [c - r for c, r in zip(entry["calls_after"], entry["restarts_after"], strict=True)]
    pairs = zip(calls, entry["baseline_calls_after"], strict=True)
    assert all(ours <= theirs for ours, theirs in pairs), entry


def compiled_anything(loaded: dict[str, Any]) -> dict[str, Any]:
    """What a loading process (:func:`load_process`'s result) compiled: kernel builds, new Triton
    files, FX-graph-cache misses or bypasses; empty when it compiled nothing."""
    found = {
        k: v
        for k, v in loaded["counters"].items()
        if v and k in ("inductor.fxgraph_cache_miss", "inductor.fxgraph_cache_bypass")
    }
    if loaded["kernel_builds"]:
        found["kernel_builds"] = loaded["kernel_builds"]
    if loaded["new_triton_files"]:
        found["new_triton_files"] = loaded["new_triton_files"]
    return found


def main(argv: list[str]) -> int:
    mode, base, index_path, out_path = argv[1], Path(argv[2]), Path(argv[3]), Path(argv[4])
    if mode != "load":
        raise SystemExit(f"unknown mode {mode!r}")
    index = json.loads(index_path.read_text())
    spec, sizes = None, SIZES
    if len(argv) > 5:  # the cases and served sizes process A ran, when not the default ones
        wanted = json.loads(Path(argv[5]).read_text())
        spec = [tuple(case) for case in wanted["spec"]]
        sizes = tuple(wanted["sizes"])
    out_path.write_text(json.dumps(load_process(base, index, spec, sizes), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
