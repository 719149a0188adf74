"""Every adaptor x output structure x shape x graph source: compile here (process A); load in a
fresh process B from the directory A compiled into; then move the cache directory and load in
another fresh process C from the new place, with the old one gone. Outputs must equal eager; B and
C must compile nothing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIRST_OF_SHIM, FULL, diff_state, state_snapshot
from tests.integration import roundtrip
from tests.integration.child import run_child
from torchshim import capabilities, torch_series

pytestmark = pytest.mark.compile

HERE = Path(__file__).parent
CASES = roundtrip.all_cases(roundtrip.ADAPTORS)
TOLERANCE = 1e-4
#: the outputs whose cases run here: every one in the first series of each shim module and the
#: full env; elsewhere the richest (tensor methods, ``.shape`` reads, a view), which fills every
#: adaptor's compile / fresh-load / relocated-load cell from both graph sources and both shapes
#: (CI time: the whole set is 36 Inductor compiles and two loading processes per series)
OUTPUTS = tuple(roundtrip.FUNCS) if (FIRST_OF_SHIM or FULL) else ("methods",)


def _run_loader(base: Path, manifest: Path, out: Path, device: str = "cpu") -> dict[str, Any]:
    args = ["load", str(base), str(manifest), str(out), device]
    result: dict[str, Any] = run_child("roundtrip.py", args, out, "loader process")
    return result


def run_roundtrip(
    work: Path, device: str, outputs: tuple[str, ...] = tuple(roundtrip.FUNCS)
) -> dict[str, Any]:
    """Compile here (process A), then two loads, each in a fresh process of its own:

    * ``fresh`` (process B) loads from the directory A compiled into, where A left it;
    * ``relocated`` (process C) loads from another path after the directory was moved: copied
      there right after compiling (before B ran, so C sees exactly what A wrote, nothing B added)
      and the original deleted before C starts, so C can read nothing from the old path.

    Two processes, not one: a second load in B's process would be served by what B's first load
    left in memory (Inductor's and Triton's in-process code caches)."""
    base = work / "cache"
    before = state_snapshot()
    manifest = roundtrip.compile_all(base, roundtrip.available_adaptors(), device, outputs)
    leaks = diff_state(before, state_snapshot())
    # Triton's kernels of every entry (GPU only), all inside the base directory
    triton_files = sum(1 for f in roundtrip._files(base) if "/triton/" in f"/{f}")
    manifest_path = work / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    moved = work / "elsewhere" / "moved-cache"
    moved.parent.mkdir()
    shutil.copytree(base, moved, symlinks=True)  # the move's copy half, as A left the directory
    t0 = time.perf_counter()
    fresh = _run_loader(base, manifest_path, work / "loaded-fresh.json", device)
    fresh_s = time.perf_counter() - t0
    shutil.rmtree(base)  # the move's delete half: nothing is left at the old path
    t0 = time.perf_counter()
    relocated = _run_loader(moved, manifest_path, work / "loaded-relocated.json", device)
    relocated_s = time.perf_counter() - t0
    return {
        "manifest": manifest,
        "fresh": fresh,
        "relocated": relocated,
        "base": str(base),
        "moved_to": str(moved),
        "process_seconds": {"fresh": round(fresh_s, 1), "relocated": round(relocated_s, 1)},
        "leaks": leaks,
        "base_gone": not base.exists(),
        "recreated_at_old_place": sorted(roundtrip._files(base))[:20],
        "triton_files_in_base": triton_files,
    }


def dump_for_inspection(result: dict[str, Any], name: str) -> None:
    """With TORCHSHIM_ROUNDTRIP_DUMP=<dir>, keep the whole round-trip record for a human."""
    target = os.environ.get("TORCHSHIM_ROUNDTRIP_DUMP")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


@pytest.fixture(scope="module")
def roundtrip_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_roundtrip(tmp_path_factory.mktemp("roundtrip"), "cpu", OUTPUTS)
    dump_for_inspection(result, "roundtrip-cpu")
    return result


def _skip_unavailable(case: roundtrip.Case) -> None:
    if case.adaptor not in roundtrip.available_adaptors():
        pytest.skip(f"standalone_compile needs torch >= 2.8 (installed series {torch_series()})")
    if case.output not in OUTPUTS:
        pytest.skip(
            f"outputs {OUTPUTS} only here; every case runs in the first series of each shim "
            "module and the full env (CI time)"
        )


def _ids(case: roundtrip.Case) -> str:
    return case.name


def _check_load(result: dict[str, Any], case: roundtrip.Case, device: str = "cpu") -> None:
    entry = result["cases"][case.name]
    assert entry["error"] is None, entry.get("trace") or entry["error"]
    if (
        device == "cpu"
        and case.adaptor == "inductor_standalone"
        and "supports_direct_cpu_load" in capabilities()
    ):
        # every case is an inference graph whose runtime wrapper only calls: loaded directly
        # (the binary format; an unpacked artifact always loads through torch's loader)
        assert entry["direct"] == 1, "loaded through torch's loader, not directly"
    assert entry["max_err"] <= TOLERANCE
    assert entry["kernel_builds"] == [], f"load compiled kernels: {entry['kernel_builds']}"
    assert result["new_triton_files"] == [], (
        f"load built Triton kernels: {result['new_triton_files']}"
    )


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_compile(roundtrip_run: dict[str, Any], case: roundtrip.Case, request: Any) -> None:
    request.node.add_marker(
        pytest.mark.matrix_cell(roundtrip.matrix_adaptor(case.adaptor), "compile")
    )
    _skip_unavailable(case)
    entry = roundtrip_run["manifest"][case.name]
    assert entry["error"] is None, entry.get("trace") or entry["error"]
    assert entry["max_err"] <= TOLERANCE
    if case.adaptor == "eager":
        assert entry["handle"] is None
    else:
        handle = json.loads(entry["handle"])
        assert handle["adaptor"] == roundtrip.matrix_adaptor(case.adaptor)
        assert all(not os.path.isabs(str(v)) for v in handle.values() if isinstance(v, str))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_load_in_fresh_process(
    roundtrip_run: dict[str, Any], case: roundtrip.Case, request: Any
) -> None:
    request.node.add_marker(
        pytest.mark.matrix_cell(roundtrip.matrix_adaptor(case.adaptor), "load_fresh_process")
    )
    _skip_unavailable(case)
    _check_load(roundtrip_run["fresh"], case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_load_after_relocation(
    roundtrip_run: dict[str, Any], case: roundtrip.Case, request: Any
) -> None:
    request.node.add_marker(
        pytest.mark.matrix_cell(roundtrip.matrix_adaptor(case.adaptor), "load_relocated")
    )
    _skip_unavailable(case)
    assert roundtrip_run["base_gone"], (
        f"loading recreated the old cache directory: {roundtrip_run['recreated_at_old_place']}"
    )
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
