"""The round trip on a CUDA device: Triton kernels must load without being rebuilt, both in a
fresh process from the directory they were compiled into and in another fresh process from the
relocated directory (two processes, see ``run_roundtrip``). Skips where there is no GPU (CI never
has one).

Run on an H200 with torch 2.11.0+cu130 / Triton 3.6.0; whatever cannot pass there goes in
``GPU_XFAILS`` below, applied strictly so that a fix turns the run red until the entry is removed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.integration import roundtrip
from tests.integration.test_adaptor_roundtrip import (
    CASES,
    TOLERANCE,
    dump_for_inspection,
    run_roundtrip,
)

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)"),
]

#: (adaptor, source, shape, check) -> reason: cases that cannot pass on the GPU, applied as strict
#: xfails. Empty: the two families recorded here before (a source-less symbol in Dynamo's shape
#: environment; re-tuning of tuned sizes at load) are fixed, see matrix/GPU.md.
GPU_XFAILS: dict[tuple[str, str, str, str], str] = {}


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_roundtrip(tmp_path_factory.mktemp("gpu-roundtrip"), "cuda")
    dump_for_inspection(result, "roundtrip-cuda")
    return result


def _params(check: str) -> list[Any]:
    params = []
    for case in CASES:
        reason = GPU_XFAILS.get((case.adaptor, case.source, case.shape, check))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", _params("compile"))
def test_gpu_compile(gpu_run: dict[str, Any], case: roundtrip.Case) -> None:
    if case.adaptor not in roundtrip.available_adaptors():
        pytest.skip("standalone_compile needs torch >= 2.8")
    entry = gpu_run["manifest"][case.name]
    assert entry["error"] is None, entry.get("trace") or entry["error"]
    assert entry["max_err"] <= TOLERANCE * 10


@pytest.mark.parametrize("case", _params("load"))
@pytest.mark.parametrize("phase", ["fresh", "relocated"])
def test_gpu_load_compiles_nothing(
    gpu_run: dict[str, Any], case: roundtrip.Case, phase: str
) -> None:
    if case.adaptor not in roundtrip.available_adaptors():
        pytest.skip("standalone_compile needs torch >= 2.8")
    loaded = gpu_run[phase]["cases"][case.name]
    assert loaded["error"] is None, loaded.get("trace") or loaded["error"]
    assert loaded["max_err"] <= TOLERANCE * 10  # fused reductions differ slightly on GPU
    # a rebuilt Triton kernel shows up as a ptxas process (compile threads = 1 in the loader)
    assert loaded["kernel_builds"] == [], loaded["kernel_builds"]


def test_gpu_compile_put_triton_cache_inside_base(gpu_run: dict[str, Any]) -> None:
    # Triton's kernels went into the cache base, so moving that one directory moved them too
    assert gpu_run["triton_files_in_base"] > 0


def test_gpu_relocated_load_leaves_old_location_alone(gpu_run: dict[str, Any]) -> None:
    # the relocated process ran with the old directory gone; it must not have made it again
    assert gpu_run["base_gone"], gpu_run["recreated_at_old_place"]
    assert gpu_run["recreated_at_old_place"] == []
