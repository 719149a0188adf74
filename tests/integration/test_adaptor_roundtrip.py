"""Every adaptor x output structure x shape x graph source: compile here (process A), load in a
fresh process B from the same directory and in a fresh process C after moving the directory.
Outputs must equal eager; B and C must compile nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import diff_state, state_snapshot
from tests.integration import roundtrip
from torchshim import torch_series

pytestmark = pytest.mark.compile

HERE = Path(__file__).parent
CASES = roundtrip.all_cases(roundtrip.ADAPTORS)
TOLERANCE = 1e-4


def _run_loader(base: Path, manifest: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(HERE / "roundtrip.py"), "load", str(base), str(manifest), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loader process failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.fixture(scope="module")
def roundtrip_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("roundtrip")
    base = work / "cache"
    before = state_snapshot()
    manifest = roundtrip.compile_all(base, roundtrip.available_adaptors())
    leaks = diff_state(before, state_snapshot())
    manifest_path = work / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    fresh = _run_loader(base, manifest_path, work / "fresh.json")
    moved = work / "elsewhere" / "moved-cache"
    moved.parent.mkdir()
    shutil.move(str(base), str(moved))
    relocated = _run_loader(moved, manifest_path, work / "relocated.json")
    return {
        "manifest": manifest,
        "fresh": fresh,
        "relocated": relocated,
        "leaks": leaks,
        "base_gone": not base.exists(),
    }


def _skip_unavailable(case: roundtrip.Case) -> None:
    if case.adaptor not in roundtrip.available_adaptors():
        pytest.skip(f"standalone_compile needs torch >= 2.8 (installed series {torch_series()})")


def _ids(case: roundtrip.Case) -> str:
    return case.name


def _check_load(result: dict[str, Any], case: roundtrip.Case) -> None:
    entry = result["cases"][case.name]
    assert entry["error"] is None, entry.get("trace") or entry["error"]
    assert entry["max_err"] <= TOLERANCE
    assert entry["kernel_builds"] == [], f"load compiled kernels: {entry['kernel_builds']}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_compile(roundtrip_run: dict[str, Any], case: roundtrip.Case, request: Any) -> None:
    request.node.add_marker(pytest.mark.matrix_cell(case.adaptor, "compile"))
    _skip_unavailable(case)
    entry = roundtrip_run["manifest"][case.name]
    assert entry["error"] is None, entry.get("trace") or entry["error"]
    assert entry["max_err"] <= TOLERANCE
    if case.adaptor == "eager":
        assert entry["handle"] is None
    else:
        handle = json.loads(entry["handle"])
        assert handle["adaptor"] == case.adaptor
        assert all(not os.path.isabs(str(v)) for v in handle.values() if isinstance(v, str))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_load_in_fresh_process(
    roundtrip_run: dict[str, Any], case: roundtrip.Case, request: Any
) -> None:
    request.node.add_marker(pytest.mark.matrix_cell(case.adaptor, "load_fresh_process"))
    _skip_unavailable(case)
    _check_load(roundtrip_run["fresh"], case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_load_after_relocation(
    roundtrip_run: dict[str, Any], case: roundtrip.Case, request: Any
) -> None:
    request.node.add_marker(pytest.mark.matrix_cell(case.adaptor, "load_relocated"))
    _skip_unavailable(case)
    assert roundtrip_run["base_gone"], "the cache directory was not moved away"
    _check_load(roundtrip_run["relocated"], case)


@pytest.mark.parametrize("phase", ["fresh", "relocated"])
def test_loading_processes_ran_no_inductor_compile(
    roundtrip_run: dict[str, Any], phase: str
) -> None:
    counters = roundtrip_run[phase]["counters"]
    compiled = {
        k: v
        for k, v in counters.items()
        if v and k in ("inductor.fxgraph_cache_miss", "inductor.fxgraph_cache_bypass")
    }
    assert not compiled, f"process {phase} compiled with Inductor: {compiled}"


def test_compiling_leaks_no_process_state(roundtrip_run: dict[str, Any]) -> None:
    assert roundtrip_run["leaks"] == []
