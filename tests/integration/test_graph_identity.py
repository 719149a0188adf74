"""The same graphs after a compile and after a load, on every series.

GPT-2 (transformers, random weights) breaks into several graphs. Dynamo traces each graph after a
break from what the previous one returned, so a compiling process and a loading process see the
same later graphs only if a compiled graph and a loaded graph return the same things, down to the
hints Dynamo reads from them. On torch 2.8 they did not: a graph with nothing for Inductor to compile
ran inside AOTAutograd's wrapper when compiled (which marks its outputs' sizes dynamic for Dynamo)
and as it is when loaded, so the next graph had other symbols, another ``graph_digest``, and a
loading process compiled it again. Here process A (this one) compiles through an engine-style
backend keyed by ``graph_digest``, and a fresh process B must find every graph it traces among
A's, load them all and compile nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration import engine
from tests.integration.child import run_child

pytestmark = pytest.mark.compile

SIZES = (2,)  # one served size: its specialised compile must be accepted (or refused) alike
TOLERANCE = 1e-4 if engine.DEVICE == "cpu" else 2e-3


def _spec() -> list[tuple[str, str, str]]:
    """GPT-2 captured with ``dynamic=True`` through the newest caching adaptor. A marked batch
    through graph breaks is checked in every env by test_backend (its ``broken`` model, a fresh
    process compiling nothing) and with GPT-2 through every adaptor by test_real_models, once per
    shim module (CI time)."""
    adaptors = engine.adaptors()
    if not adaptors or "gpt2" not in engine.MODELS:
        return []
    return [(adaptors[-1], "gpt2", "dynamic")]


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("transformers", reason="transformers is not installed; it builds GPT-2")
    spec = _spec()
    if not spec:
        pytest.skip("no caching adaptor on this torch (or TORCHSHIM_TEST_ADAPTORS left it out)")
    work = tmp_path_factory.mktemp("identity")
    base = work / "cache"
    index: dict[str, Any] = {}
    engine.build("gpt2")  # transformers' import sets variables of its own
    compiled = engine.run(base, "compile", index, spec, SIZES)
    (work / "index.json").write_text(json.dumps(index))
    (work / "spec.json").write_text(json.dumps({"spec": spec, "sizes": SIZES}))
    out = work / "loaded.json"
    args = ["load", str(base), str(work / "index.json"), str(out), str(work / "spec.json")]
    return {
        "spec": spec,
        "compiled": compiled,
        "loaded": run_child("engine.py", args, out, "process B"),
        "index": index,
    }


def test_a_loading_process_traces_the_graphs_the_compiling_one_stored(
    identity_run: dict[str, Any],
) -> None:
    for adaptor, model, marking in identity_run["spec"]:
        name = engine.case_name(adaptor, model, marking)
        compiled, loaded = identity_run["compiled"][name], identity_run["loaded"]["models"][name]
        engine.check_ran(compiled, TOLERANCE)
        engine.check_ran(loaded, TOLERANCE)
        handles = identity_run["index"][name]
        # GPT-2 of transformers 5 breaks into three graphs (4.x, on torch 2.5 / 2.6: one)
        for key, labels in handles.items():
            missing = [label for label, handle in labels.items() if handle is None]
            assert not missing, f"graph {key}: no handle for {missing}"
        # every graph B traced after the first is one A compiled, so B found it: no recompile
        assert loaded["misses"] == [], (compiled["graphs"], loaded["graphs"])
        assert set(loaded["graphs"]) <= set(compiled["graphs"])
        # every size symbolic from the start: nothing to re-trace, the same graphs in order
        assert loaded["graphs"] == compiled["graphs"]
        # and each graph served the same sizes with the same artifacts in both processes
        assert loaded["ran"] == compiled["ran"]
        if engine.DEVICE == "cpu":
            # every graph kept its size-2 artifact: what Inductor assumed for it on CPU, Dynamo's
            # guards prove (on 2.8 a refusal, "8 guards", before). On the GPU, padding for the
            # matmuls makes Inductor assume conditions on the sequence length: refused there.
            assert all(labels.get("2") != engine.GENERAL for labels in handles.values()), handles
            assert any(run.endswith(":2") for run in loaded["ran"]), loaded["ran"]


def test_the_loading_process_compiled_nothing(identity_run: dict[str, Any]) -> None:
    """On a GPU this includes the Triton kernels torch cannot launch directly from the artifact:
    the loading process compiles them from source and finds them in the entry's Triton cache only
    if it hashes them as the compiling process did (the ptxas version, shims/_common.py)."""
    loaded = identity_run["loaded"]
    assert engine.compiled_anything(loaded) == {}
