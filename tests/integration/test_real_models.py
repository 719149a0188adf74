"""Third-party models captured by Dynamo with a dynamic batch, through a backend that calls the
adaptors as an engine does: process A (this one) compiles the general graph and two batch sizes;
a fresh process B loads everything, compiling nothing, and both get the same outputs as eager.
One model is captured with Dynamo's defaults, the other under torchshim.capture_config() (see
engine.CAPTURE): either way both processes must end with the same graph."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import diff_state, first_of_shim, state_snapshot
from tests.integration import engine
from tests.integration.child import run_child

pytestmark = [
    pytest.mark.compile,
    # real models in fresh processes: heavy, so once per shim module and in the full env
    pytest.mark.skipif(
        not (os.environ.get("TORCHSHIM_FULL", "").strip() == "1" or first_of_shim()),
        reason="real models: run in the first series of each shim module and the full env",
    ),
]

HERE = Path(__file__).parent
CASES = [f"{a}/{m}" for a in ("inductor", "inductor_standalone") for m in engine.MODELS]
TOLERANCE = 1e-4 if engine.DEVICE == "cpu" else 2e-3  # GPU kernels reduce in another order


@pytest.fixture(scope="module")
def models_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # every test here compares the outputs of every model run (TORCHSHIM_TEST_MODELS: a subset)
    packages = {"gpt2": "transformers", "x_transformer": "x_transformers"}
    for package in (packages[name] for name in engine.MODELS):
        pytest.importorskip(package, reason=f"{package} is not installed; it builds a model here")
    work = tmp_path_factory.mktemp("models")
    base = work / "cache"
    index: dict[str, Any] = {}
    for name in engine.MODELS:  # third-party imports set variables of their own (KMP_..., ...)
        engine.build(name)
    before = state_snapshot()
    compiled = engine.run(base, "compile", index)
    leaks = diff_state(before, state_snapshot())
    index_path = work / "index.json"
    index_path.write_text(json.dumps(index))
    out = work / "loaded.json"
    args = ["load", str(base), str(index_path), str(out)]
    return {
        "compiled": compiled,
        "loaded": run_child("engine.py", args, out, "process B"),
        "index": index,
        "leaks": leaks,
    }


def _available(case: str) -> None:
    adaptor, model = case.split("/")
    if adaptor not in engine.adaptors():
        pytest.skip(
            "standalone_compile needs torch >= 2.8 (or TORCHSHIM_TEST_ADAPTORS left it out)"
        )
    if (adaptor, model) not in engine.cases():
        pytest.skip(f"not among this env's cases (CI time): {engine.cases()}")


def _check(entry: dict[str, Any]) -> None:
    engine.check_ran(entry, TOLERANCE)  # batch 3 is not served: the general graph runs it
    assert entry["backend_calls"] == len(entry["graphs"]) + entry["restarts"], entry
    assert entry["restarts"] <= len(entry["graphs"]), entry
    # served sizes ran artifacts of their own (a graph whose specialisation would depend on
    # other sizes, or that Dynamo traced with a static batch, runs its general artifact)
    ran = entry["ran"]
    assert any(name.endswith((":2", ":4")) for name in ran), ran


@pytest.mark.parametrize("case", CASES)
def test_compiles_in_process_a(models_run: dict[str, Any], case: str, request: Any) -> None:
    request.node.add_marker(
        pytest.mark.matrix_cell(case.split("/", maxsplit=1)[0], "third_party_model")
    )
    _available(case)
    _check(models_run["compiled"][case])
    handles = models_run["index"][case]
    assert len(handles) == len(set(models_run["compiled"][case]["graphs"]))
    for labels in handles.values():
        assert set(labels) == {"general", "2", "4"}
        missing = [label for label, handle in labels.items() if handle is None]
        assert not missing, f"no handle for {missing}: these graphs would recompile on every start"


@pytest.mark.parametrize("case", CASES)
def test_loads_in_process_b(models_run: dict[str, Any], case: str, request: Any) -> None:
    request.node.add_marker(
        pytest.mark.matrix_cell(case.split("/", maxsplit=1)[0], "third_party_model")
    )
    _available(case)
    entry = models_run["loaded"]["models"][case]
    _check(entry)
    # process B traced graphs process A compiled (not always all of them: Dynamo's
    # profile-guided dynamic shapes may skip a static first trace), and found every artifact
    assert set(entry["graphs"]) <= set(models_run["compiled"][case]["graphs"])
    assert entry["misses"] == []


def test_process_b_compiled_nothing(models_run: dict[str, Any]) -> None:
    loaded = models_run["loaded"]
    assert engine.compiled_anything(loaded) == {}


def test_compiling_leaks_no_process_state(models_run: dict[str, Any]) -> None:
    assert models_run["leaks"] == []
