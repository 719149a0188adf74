"""Shared fixtures: state-leak checks after every test, the matrix result file, test order."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from torchshim._patching import active_patch_count
from torchshim.shims import REGISTRY, load_shim_module
from torchshim.shims._inventory import snapshot, torch_config_snapshot

# Inductor sets TORCHINDUCTOR_CACHE_DIR itself the first time it needs a cache when the variable is
# unset; give it one up front so that the leak check below sees only what torchshim changes.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "torchshim-test-inductor")
)

PATCH_TARGETS = sorted(
    {target for name in set(REGISTRY.values()) for target in load_shim_module(name).PATCH_TARGETS}
)

_CELLS: dict[str, dict[str, list[tuple[str, str]]]] = {}


def first_of_shim() -> bool:
    """Whether the installed torch is the first series its shim module serves: heavy cases run
    there (once per shim module) and in the full env (``TORCHSHIM_FULL=1``)."""
    from torchshim.shims import active

    shim = active()
    return (shim.series.major, shim.series.minor) == tuple(shim.module.FIRST_SERIES)


FIRST_OF_SHIM = first_of_shim()
FULL = os.environ.get("TORCHSHIM_FULL", "").strip() == "1"

_COUNTS = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0, "xpassed": 0, "error": 0}
_START = time.time()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "matrix_cell(adaptor, feature): the matrix cell this test fills"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The env check runs first: a wrong torch makes every other result meaningless.
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_00_env.py") else 1)


# Variables torch itself sets on first use of CUDA or Inductor (not torchshim's doing), and pytest's.
NOT_OURS = {
    "PYTEST_CURRENT_TEST",
    "CUDA_MODULE_LOADING",
    "TRITON_PTXAS_PATH",
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",
}


def state_snapshot() -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in NOT_OURS}
    return {
        "environ": environ,
        "config": torch_config_snapshot(),
        "patched": snapshot(PATCH_TARGETS),
        "active_patches": active_patch_count(),
    }


def diff_state(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("environ", "config", "patched"):
        b, a = before[key], after[key]
        for name in sorted(set(b) | set(a)):
            if b.get(name) != a.get(name):
                problems.append(f"{key}: {name}: {b.get(name)!r} -> {a.get(name)!r}")
    if after["active_patches"] != before["active_patches"]:
        problems.append(f"open patches: {before['active_patches']} -> {after['active_patches']}")
    return problems


@pytest.fixture(autouse=True)
def _no_leaked_state() -> Any:
    before = state_snapshot()
    yield
    problems = diff_state(before, state_snapshot())
    assert not problems, "test leaked process state:\n" + "\n".join(problems)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail)
    text = str(longrepr or "")
    return text.strip().splitlines()[-1][:200] if text.strip() else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    status = None
    if hasattr(report, "wasxfail"):
        status = "xfail" if report.skipped else "fail"
    elif report.when == "call":
        status = {"passed": "pass", "failed": "fail", "skipped": "skip"}[report.outcome]
    elif report.outcome != "passed":
        status = "skip" if report.skipped else "fail"
    if status is None:
        return
    if report.when == "call" or status != "pass":
        key = {"pass": "passed", "fail": "failed", "skip": "skipped", "xfail": "xfailed"}[status]
        if report.when != "call" and status == "fail":
            key = "error"
        _COUNTS[key] += 1
    marker = item.get_closest_marker("matrix_cell")
    if marker is not None:
        adaptor, feature = marker.args
        _CELLS.setdefault(adaptor, {}).setdefault(feature, []).append((status, _reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("TORCHSHIM_MATRIX_RESULT")
    if not target:
        return
    from torchshim._version import installed_torch_version, torch_series
    from torchshim.doctor import hook_report
    from torchshim.matrix import aggregate_cell, write_result

    report = hook_report()
    write_result(
        Path(target),
        {
            "env": os.environ.get("TORCHSHIM_MATRIX_ENV", Path(target).stem),
            "torch_version": installed_torch_version(),
            "series": str(torch_series()),
            "doctor": report.to_json(),
            "pytest": {
                **_COUNTS,
                "exitstatus": int(exitstatus),
                "duration_s": round(time.time() - _START, 1),
            },
            "cells": {
                adaptor: {feature: aggregate_cell(outs) for feature, outs in features.items()}
                for adaptor, features in _CELLS.items()
            },
        },
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    """A real, empty ``redis-server`` on a free loopback port, killed after the test."""
    from tests.redis_server import MISSING, REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip(MISSING)
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
