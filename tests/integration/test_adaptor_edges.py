"""Adaptor behaviour at the edges: rejected graphs, caching turned off, reuse of a handle."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import torchshim
from torchshim.adaptors import make_adaptor

pytestmark = pytest.mark.compile

COMPILING = ["inductor"] + (
    ["inductor_standalone"] if "supports_standalone_compile" in torchshim.capabilities() else []
)


def mm(x, w):  # type: ignore[no-untyped-def]
    return torch.relu(x @ w) - 1


@pytest.mark.parametrize("name", COMPILING)
def test_rejected_graph_returns_nothing_and_logs_why(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    gm = torch.fx.symbolic_trace(mm)
    bad_inputs = [torch.randn(2, 3), torch.randn(4, 5)]  # x @ w cannot be computed
    with make_adaptor(name) as adaptor, caplog.at_level(logging.WARNING, logger="torchshim"):
        adaptor.initialize_cache(tmp_path)
        assert adaptor.compile(gm, bad_inputs, {}, runtime_shape=2) == (None, None)
    assert any("rejected graph" in r.getMessage() for r in caplog.records)
    assert not list((tmp_path / "entries").rglob("*"))  # nothing stored
    assert not list((tmp_path / "tmp").iterdir())  # nothing half-written left behind


@pytest.mark.parametrize("name", COMPILING)
def test_disable_cache_compiles_without_a_handle(tmp_path: Path, name: str) -> None:
    gm = torch.fx.symbolic_trace(mm)
    args = [torch.randn(3, 7), torch.randn(7, 2)]
    with make_adaptor(name) as adaptor:
        adaptor.initialize_cache(tmp_path, disable_cache=True)
        fn, handle = adaptor.compile(gm, args, {}, runtime_shape=None)
        assert handle is None
        assert fn is not None
        torch.testing.assert_close(fn(*args), mm(*args))


@pytest.mark.parametrize("name", COMPILING)
def test_caller_graph_is_not_mutated_and_handle_loads_twice(tmp_path: Path, name: str) -> None:
    gm = torch.fx.symbolic_trace(mm)
    code_before = gm.code
    args = [torch.randn(6, 7), torch.randn(7, 2)]
    with make_adaptor(name) as adaptor:
        adaptor.initialize_cache(tmp_path / "part", prefix="part")
        fn, handle = adaptor.compile(gm, args, {"max_autotune": False}, runtime_shape=6)
        assert fn is not None
        assert handle is not None
        assert handle.runtime_shape == 6
        assert gm.code == code_before
        first = adaptor.load(handle, gm, args, 0, runtime_shape=6)
        second = adaptor.load(handle.to_json(), gm, args, 0, runtime_shape=6)
        for f in (fn, first, second):
            torch.testing.assert_close(f(*args), mm(*args))


TUNED = "inductor/zz/" + "d" * 64 + ".best_config"


def _tune(directory: Path) -> None:
    """What Inductor does on CUDA at a kernel's first call: write the winning configuration
    beside the kernel, in the directory the graph runs from (it writes none on CPU)."""
    (directory / TUNED).parent.mkdir(parents=True, exist_ok=True)
    (directory / TUNED).write_text('{"XBLOCK": 256, "num_warps": 8, "configs_hash": "h"}')


def _only(pattern: str, root: Path) -> Path:
    found = sorted((root / "tmp").glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("name", COMPILING)
def test_tuning_results_of_the_first_calls_join_the_entry(tmp_path: Path, name: str) -> None:
    gm = torch.fx.symbolic_trace(mm)
    args = [torch.randn(6, 7), torch.randn(7, 2)]
    with make_adaptor(name) as adaptor:
        adaptor.initialize_cache(tmp_path)
        fn, handle = adaptor.compile(gm, args, {"max_autotune": False}, runtime_shape=6)
        assert fn is not None and handle is not None
        torch.testing.assert_close(fn(*args), mm(*args))
        _tune(_only("stage-*", tmp_path))  # the compiling process's kernels run from there
        assert adaptor.save_tuning() == 1
        assert adaptor.save_tuning() == 0  # offered once
    assert not list((tmp_path / "tmp").iterdir())  # closing removed the staging directory
    entry = next((tmp_path / "entries").glob(f"*/{handle.entry}"))
    assert (entry / TUNED).is_file()
    # a later process's load gets it in its verified copy, and has nothing new to add
    with make_adaptor(name) as adaptor:
        adaptor.initialize_cache(tmp_path)
        loaded = adaptor.load(handle, gm, args, 0, runtime_shape=6)
        torch.testing.assert_close(loaded(*args), mm(*args))
        checkout = _only("checkout-*", tmp_path)
        assert (checkout / TUNED).read_bytes() == (entry / TUNED).read_bytes()
        assert adaptor.save_tuning() == 0
        # the backend's case: the directory outlives the adaptor until the first calls ran
        pending = adaptor.detach_tuning()
        assert pending is not None
    assert checkout.is_dir()
    (checkout / TUNED).unlink()
    (checkout / TUNED.replace("d" * 64, "e" * 64)).write_text("{}")
    pending.close()
    assert not checkout.exists() and not list((tmp_path / "tmp").iterdir())
    assert (entry / TUNED.replace("d" * 64, "e" * 64)).is_file()
    with make_adaptor(name) as adaptor:  # the amended entry verifies
        adaptor.initialize_cache(tmp_path)
        torch.testing.assert_close(adaptor.load(handle, gm, args, 0, 6)(*args), mm(*args))
