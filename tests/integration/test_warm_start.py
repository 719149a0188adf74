"""Warm start at the floor: a warm process runs the saved Dynamo trace (torch 2.10+; capability
``supports_dynamo_program``) and the stored graphs, tracing and compiling nothing; every factor a
saved trace depends on, changed one at a time, is a miss with its log line and correct outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIRST_OF_SHIM, FULL
from torchshim.shims import capabilities

pytestmark = pytest.mark.compile

HERE = Path(__file__).parent
SAVES_TRACES = "supports_dynamo_program" in capabilities()
#: CPU graphs load without torch's loader (the warm child runs on TORCHSHIM_TEST_DEVICE)
DIRECT = "supports_direct_cpu_load" in capabilities() and (
    os.environ.get("TORCHSHIM_TEST_DEVICE", "cpu") == "cpu"
)

MODEL = """
import torch
from torch import nn

from warm_helper import act, keeps_output


class Model(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.scale = 0.5

    @keeps_output  # a decorated forward, as transformers writes its models
    def forward(self, x):
        return x + self.down(act(self.up(self.norm(x)))) * self.scale
"""

# a module of helpers the model calls: its code is not in the model's file, so only the hash of
# every module the trace read protects a saved trace from an edit here
HELPER = """
import functools

import torch


def keeps_output(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    return wrapper


def act(x):
    return torch.nn.functional.gelu(x)
"""


def _write_model(model_dir: Path) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "warm_model.py").write_text(MODEL)
    (model_dir / "warm_helper.py").write_text(HELPER)


def _run(model_dir: Path, cache: Path, *extra: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, str(HERE / "warm_child.py"), str(model_dir), str(cache), *extra],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :]), done.stderr


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A model directory and a cache a cold process filled; the cold process's result."""
    root = tmp_path_factory.mktemp("warm")
    _write_model(root / "model")
    cold, _ = _run(root / "model", root / "cache")
    return root / "model", root / "cache", cold


def test_a_warm_process_traces_and_compiles_nothing(
    warm: tuple[Path, Path, dict[str, Any]],
) -> None:
    model_dir, cache, cold = warm
    assert cold["same"] and cold["compiled"] >= 1 and cold["frames"] >= 1
    result, log = _run(model_dir, cache)
    assert result["same"] and result["compiled"] == 0 and result["loaded"] == cold["compiled"]
    # nothing tuned either (CUDA: the kernels' tuning results, written at the cold process's
    # first calls, were added to the entries)
    assert result["tunings"] == 0, (cold["tunings"], result["tunings"])
    assert result["refused_same"]  # another sequence length: traced, and right
    assert result["changed_same"]  # a constant the trace read, changed: traced, and right
    if SAVES_TRACES:
        assert cold["traces_saved"] == 2  # the symbolic batch and batch 1
        assert result["trace_loaded"] and result["frames"] == 0, result
        assert "a call the saved trace does not cover" in log, log[-3000:]
    if DIRECT and SAVES_TRACES:
        # every graph loaded by running its module with its kernels opened: Inductor's
        # compiler (about 1 s of imports) never imported in the warm process
        assert result["direct_loads"] == result["loaded"], result
        assert not result["compiler_imported"], result
    if not SAVES_TRACES:  # traced as torch.compile does: the same two frames, no compile
        assert not result["trace_loaded"] and result["frames"] == cold["frames"]


@pytest.mark.skipif(not (FIRST_OF_SHIM or FULL), reason="once per shim module")
def test_processes_leave_nothing_in_the_cache_tmp(
    warm: tuple[Path, Path, dict[str, Any]],
) -> None:
    model_dir, cache, _cold = warm
    _run(model_dir, cache)
    assert not list((cache / "rank_0" / "tmp").iterdir())


FACTORS = [
    (("--dim", "24"), "parameters"),
    (("--dtype", "float64"), "parameters"),
    (("--seq", "6"), "inputs"),
    (("--config", "max_autotune=False"), "compiler_config"),
]


@pytest.fixture(scope="module")
def general_only(warm: tuple[Path, Path, dict[str, Any]]) -> tuple[Path, Path]:
    """A cache with the model's saved trace and general graph only (no served sizes)."""
    model_dir, cache, _cold = warm
    base = cache.parent / "general-only"
    _run(model_dir, base, "--sizes", "")
    return model_dir, base


@pytest.mark.skipif(not SAVES_TRACES, reason="the series cannot save Dynamo's output")
@pytest.mark.skipif(not (FIRST_OF_SHIM or FULL), reason="once per shim module")
@pytest.mark.parametrize(("change", "factor"), FACTORS, ids=[f[1] + f[0][1] for f in FACTORS])
def test_each_factor_changed_is_a_miss_with_its_line(
    general_only: tuple[Path, Path], change: tuple[str, str], factor: str, tmp_path: Path
) -> None:
    """Each change on its own, against a cache that differs from it in that factor alone."""
    model_dir, base = general_only
    cache = tmp_path / "cache"
    shutil.copytree(base, cache, symlinks=True)
    result, log = _run(model_dir, cache, "--sizes", "", *change)
    assert result["same"] and not result["trace_loaded"] and result["frames"] >= 1, result
    assert f"is for another {factor}" in log or f"another {factor}" in log, log[-3000:]


@pytest.mark.skipif(not SAVES_TRACES, reason="the series cannot save Dynamo's output")
@pytest.mark.skipif(not (FIRST_OF_SHIM or FULL), reason="once per shim module")
def test_an_edited_model_source_is_a_miss(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    _write_model(model_dir)
    cache = tmp_path / "cache"
    _run(model_dir, cache, "--sizes", "")
    (model_dir / "warm_model.py").write_text(MODEL.replace("self.scale = 0.5", "self.scale = 0.25"))
    result, log = _run(model_dir, cache, "--sizes", "")
    assert result["same"] and not result["trace_loaded"] and result["frames"] >= 1, result
    assert "another model_source" in log, log[-3000:]


@pytest.mark.skipif(not SAVES_TRACES, reason="the series cannot save Dynamo's output")
@pytest.mark.skipif(not (FIRST_OF_SHIM or FULL), reason="once per shim module")
def test_a_saved_trace_that_does_not_load_is_a_miss(tmp_path: Path) -> None:
    """Bytes that are not a program of this torch build (another build's, a truncated file) are
    a miss with one line, never a crash."""
    from torchshim.cache import CacheStore

    model_dir = tmp_path / "model"
    _write_model(model_dir)
    cache = tmp_path / "cache"
    _run(model_dir, cache, "--sizes", "")
    store = CacheStore(cache / "rank_0")
    programs = [e for e in store.entries() if e.meta.get("kind") == "dynamo_program"]
    assert len(programs) == 1
    entry = programs[0]
    manifest = entry.manifest or {}
    with store.writer(entry.id, str(manifest.get("key", ""))) as writer:
        for name in manifest.get("files", {}):
            data = (entry.path / name).read_bytes()
            (writer.path / name).write_bytes(data[: len(data) // 2])
        store.remove(entry.id)
        writer.commit(entry.meta)
    result, log = _run(model_dir, cache, "--sizes", "")
    assert result["same"] and not result["trace_loaded"] and result["frames"] >= 1, result
    assert "could not be loaded" in log, log[-3000:]


@pytest.mark.skipif(not SAVES_TRACES, reason="the series cannot save Dynamo's output")
@pytest.mark.skipif(not (FIRST_OF_SHIM or FULL), reason="once per shim module")
def test_an_edited_helper_module_is_a_miss(tmp_path: Path) -> None:
    """An edit in a module the model calls into (not the model's own file, so not in the key)
    is caught by the hash of every module the trace read: a miss naming it, and right outputs."""
    model_dir = tmp_path / "model"
    _write_model(model_dir)
    cache = tmp_path / "cache"
    _run(model_dir, cache, "--sizes", "")
    edited = HELPER.replace("functional.gelu(x)", "functional.relu(x)")
    (model_dir / "warm_helper.py").write_text(edited)
    result, log = _run(model_dir, cache, "--sizes", "")
    assert result["same"] and not result["trace_loaded"] and result["frames"] >= 1, result
    assert "the code of module warm_helper changed" in log, log[-3000:]
