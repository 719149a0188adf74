"""Serving on the CPU: compile ranges, padding, per-variant counters, and CUDA-graph settings on a
CPU model. The eager cases run in every env (real Dynamo traces, nothing compiled); the Inductor
range and padding compiles run once per shim module (the first series each module serves)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.conftest import first_of_shim

torch = pytest.importorskip("torch")

import torchshim  # noqa: E402
from torchshim import config  # noqa: E402
from torchshim.adaptors.graphs import batch_dims, mutated_inputs  # noqa: E402
from torchshim.errors import ConfigError  # noqa: E402
from torchshim.options import BackendOptions  # noqa: E402
from torchshim.shims import active  # noqa: E402

FULL = os.environ.get("TORCHSHIM_FULL", "").strip() == "1"
FIRST_OF_SHIM = first_of_shim()
once_per_shim = pytest.mark.skipif(
    not (FIRST_OF_SHIM or FULL),
    reason=f"real Inductor compiles: run in the first series of each shim module and the full "
    f"env (this is torch {active().torch_version}, shim {active().module_name})",
)


class Rows(torch.nn.Module):
    """Rows are independent (so padding is right): a per-row MLP with layer norm."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 8)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 2


def _model() -> Rows:
    torch.manual_seed(0)
    return Rows().eval()


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sizes", "says"),
    [
        ([1, (4, 2)], "ranges"),
        ([(2, 8), (8, 16)], "overlap"),
        ([4, (2, 8)], "inside the range"),
        ([(0, 4)], "1 <= lo"),
        ([(1, 2, 3)], "ranges"),
        (["4"], "ranges"),
    ],
)
def test_invalid_or_overlapping_ranges_are_config_errors(sizes: list[object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        BackendOptions(compile_sizes=sizes)  # type: ignore[arg-type]


def test_ranges_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSHIM_COMPILE_SIZES", "1,2,4,8,9-64")
    options = BackendOptions.from_environment()
    assert options.sizes == (1, 2, 4, 8) and options.ranges == ((9, 64),)
    for bad in ("9-", "8-4", "1,-3", "2-4-6"):
        monkeypatch.setenv("TORCHSHIM_COMPILE_SIZES", bad)
        with pytest.raises(ConfigError, match="TORCHSHIM_COMPILE_SIZES"):
            config.check_environment()
    monkeypatch.setenv("TORCHSHIM_COMPILE_SIZES", "2-8,8")
    with pytest.raises(ConfigError, match="inside the range"):
        BackendOptions.from_environment()
    monkeypatch.setenv("TORCHSHIM_COMPILE_SIZES", "")
    monkeypatch.setenv("TORCHSHIM_CUDAGRAPHS", "sometimes")
    with pytest.raises(ConfigError, match="TORCHSHIM_CUDAGRAPHS"):
        config.check_environment()


def test_cudagraphs_true_on_a_cpu_model_is_a_config_error(tmp_path: Path) -> None:
    model = _model()
    fast = torchshim.compile(model, tmp_path, adaptor="eager", compile_sizes=[2], cudagraphs=True)
    with pytest.raises(ConfigError, match=r"cudagraphs=True.*not CUDA"), torch.no_grad():
        fast(torch.randn(3, 16))


def test_cudagraphs_auto_on_a_cpu_model_captures_nothing(tmp_path: Path) -> None:
    model = _model()
    fast = torchshim.compile(model, tmp_path, adaptor="eager", compile_sizes=[2, 4])
    with torch.no_grad():
        fast(torch.randn(3, 16))
        fast(torch.randn(4, 16))
    serving = fast.backend.stats.serving
    assert serving.captured == {} and serving.uncaptured == {}
    assert serving.capture_seconds == 0.0


# -- dispatch --------------------------------------------------------------------------------------
def test_dispatch_by_size_range_and_general_with_counters(tmp_path: Path) -> None:
    model = _model()
    fast = torchshim.compile(model, tmp_path, adaptor="eager", compile_sizes=[2, 4, (6, 12)])
    with torch.no_grad():
        for batch in (3, 2, 4, 6, 9, 12, 13, 5):
            x = torch.randn(batch, 16)
            assert torch.allclose(fast(x), model(x), atol=1e-6), batch
    calls = fast.backend.stats.serving.calls
    assert calls["size 2"] == 1 and calls["size 4"] == 1
    assert calls["range 6-12"] == 3
    assert calls["general"] == 3  # batches 3 (the first call), 13 and 5
    assert fast.backend.stats.as_dict()["serving"]["calls"]["range 6-12"] == 3


def test_padding_serves_sizes_between_with_the_next_size_and_cuts_back(tmp_path: Path) -> None:
    model = _model()
    fast = torchshim.compile(
        model, tmp_path, adaptor="eager", compile_sizes=[2, 4, 8], pad_batch=True
    )
    with torch.no_grad():
        for batch in (5, 3, 7, 8, 9):
            x = torch.randn(batch, 16)
            out = fast(x)
            assert out.shape == (batch, 8)
            assert torch.allclose(out, model(x), atol=1e-6), batch
    calls = fast.backend.stats.serving.calls
    assert calls["padded 3->4"] == 1 and calls["padded 5->8"] == 1 and calls["padded 7->8"] == 1
    assert calls["size 8"] == 1 and calls["general"] == 1  # 9: above the largest size


def test_graph_metadata_for_padding_and_capture() -> None:
    def f(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        cache.add_(1)
        return x * 2

    traced = torch.fx.symbolic_trace(f)
    assert mutated_inputs(traced) == ["cache"]
    assert batch_dims(traced, None) == ([], [])


# -- real compiles ---------------------------------------------------------------------------------
@pytest.mark.compile
@once_per_shim
def test_a_compile_range_is_compiled_stored_and_loaded_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model()
    options = BackendOptions(cache_dir=tmp_path, adaptor="inductor", compile_sizes=[(5, 16)])
    fast = torchshim.compile(model, options)
    with torch.no_grad():
        for batch in (3, 5, 11, 16, 17):
            x = torch.randn(batch, 16)
            assert torch.allclose(fast(x), model(x), atol=1e-4), batch
    stats = fast.backend.stats
    assert stats.compiled >= 2 and stats.serving.calls["range 5-16"] == 3
    entries = torchshim.cache.CacheStore(tmp_path / "rank_0").entries()
    assert [5, 16] in [e.meta.get("runtime_shape") for e in entries]
    again = torchshim.compile(_model(), options)
    with torch.no_grad():
        x = torch.randn(7, 16)
        assert torch.allclose(again(x), model(x), atol=1e-4)
    assert again.backend.stats.compiled == 0 and again.backend.stats.loaded >= 2
    assert again.backend.stats.serving.calls["range 5-16"] == 1


@pytest.mark.compile
@once_per_shim
def test_padded_results_equal_unpadded_ones_through_inductor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model()
    fast = torchshim.compile(
        model, tmp_path, adaptor="inductor", compile_sizes=[2, 4], pad_batch=True
    )
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="torchshim"):
        for batch in (3, 4, 2):
            x = torch.randn(batch, 16)
            assert torch.allclose(fast(x), model(x), atol=1e-4), batch
    calls = fast.backend.stats.serving.calls
    assert calls["padded 3->4"] == 1 and calls["size 4"] == 1 and calls["size 2"] == 1


def test_a_range_handle_round_trips_as_a_pair() -> None:
    from torchshim.adaptors import CACHE_FORMAT_VERSION, InductorHandle, handle_from_json
    from torchshim.errors import HandleFormatError

    handle = InductorHandle(
        adaptor="inductor",
        format_version=CACHE_FORMAT_VERSION,
        compiler_hash="x",
        runtime_shape=(9, 64),
        entry="ab" * 16,
        key="k",
    )
    assert handle_from_json(handle.to_json()) == handle
    text = handle.to_json().replace("[9, 64]", "[64, 9]")
    with pytest.raises(HandleFormatError, match="runtime_shape"):
        handle_from_json(text)
