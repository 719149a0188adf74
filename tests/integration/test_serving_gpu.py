"""CUDA graphs per served size, on a GPU (CI has none: every test here skips cleanly).

Replays equal eager for every served size (and a range, uncaptured), new inputs give new results,
a caller's earlier outputs stay intact (the dispatcher copies out), a graph that writes to its
inputs runs uncaptured with its log line, a warm process compiles nothing and captures its
graphs, and an artifact each caching adaptor loads can be captured by an engine itself."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torchshim  # noqa: E402
from torchshim.options import BackendOptions  # noqa: E402

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason=f"no CUDA device (torch {torch.__version__})"
    ),
]

HERE = Path(__file__).parent
SIZES = [1, 2, 4, 8, (9, 16)]
CHEAP = {"max_autotune": False}  # the tests check replay, not tuning: keep compiles short


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(64)
        self.up = torch.nn.Linear(64, 256)
        self.down = torch.nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def _model() -> Block:
    torch.manual_seed(0)
    return Block().cuda().eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Block]:
    model = _model()
    options = BackendOptions(
        cache_dir=tmp_path_factory.mktemp("serving"), compile_sizes=SIZES, compiler_config=CHEAP
    )
    fast = torchshim.compile(model, options)
    with torch.no_grad():
        fast(torch.randn(3, 64, device="cuda"))
    return fast, model


def test_every_served_size_is_captured_and_replays_equal_to_eager(served: tuple) -> None:
    fast, model = served
    serving = fast.backend.stats.serving
    assert {"graph 0 size 2", "graph 0 size 4", "graph 0 size 8"} <= set(serving.captured), (
        serving.as_dict()
    )
    with torch.no_grad():
        for batch in (1, 2, 4, 8, 12, 3):
            x = torch.randn(batch, 64, device="cuda")
            torch.testing.assert_close(fast(x), model(x), atol=2e-5, rtol=1e-4)
    calls = serving.calls
    assert calls["range 9-16"] >= 1 and calls["size 8"] >= 1
    assert serving.capture_seconds > 0


def test_new_inputs_give_new_results_and_earlier_outputs_stay_intact(served: tuple) -> None:
    fast, model = served
    with torch.no_grad():
        a, b = torch.randn(4, 64, device="cuda"), torch.randn(4, 64, device="cuda")
        first = fast(a)
        kept = first.clone()
        second = fast(b)
        torch.testing.assert_close(second, model(b), atol=2e-5, rtol=1e-4)
        assert not torch.allclose(first, second)
        assert torch.equal(first, kept)  # not overwritten by the replay that made `second`


def test_padded_sizes_replay_the_next_sizes_graph_equal_to_eager(tmp_path: Path) -> None:
    model = _model()
    fast = torchshim.compile(
        model, tmp_path, compile_sizes=[2, 4], pad_batch=True, compiler_config=CHEAP
    )
    with torch.no_grad():
        for batch in (3, 3, 4, 3):
            x = torch.randn(batch, 64, device="cuda")
            torch.testing.assert_close(fast(x), model(x), atol=2e-5, rtol=1e-4)
    serving = fast.backend.stats.serving
    assert serving.calls["padded 3->4"] == 3 and "graph 0 size 4" in serving.captured


def test_a_graph_writing_to_its_inputs_runs_uncaptured_with_its_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
            seen.add_(1)
            return x * 2

    fast = torchshim.compile(
        Counting(), tmp_path, compile_sizes=[2, 4], compiler_config=CHEAP, batch_dim=0
    )
    seen = torch.zeros(1, device="cuda")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="torchshim"):
        for batch in (3, 4, 4):
            x = torch.randn(batch, 8, device="cuda")
            torch.testing.assert_close(fast(x, seen), x * 2)
    assert float(seen) == 3.0  # the caller's tensor was written, every call
    assert fast.backend.stats.serving.captured == {}
    assert any("without CUDA graphs" in r.getMessage() for r in caplog.records)


def test_warm_process_compiles_nothing_and_captures_its_graphs(tmp_path: Path) -> None:
    script = HERE / "serving_child.py"
    records = []
    for _phase in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
    warm = records[1]
    assert warm["compiled"] == 0 and warm["loaded"] >= 4, warm
    assert warm["builds"] == 0 and warm["fx_misses"] == 0, warm
    assert len(warm["captured"]) >= 3 and warm["max_err"] < 1e-4, warm


@pytest.mark.parametrize("adaptor", ["inductor", "inductor_standalone"])
def test_a_loaded_artifact_can_be_captured_by_an_engine(tmp_path: Path, adaptor: str) -> None:
    if adaptor == "inductor_standalone" and "supports_standalone_compile" not in (
        torchshim.capabilities()
    ):
        pytest.skip(f"standalone_compile needs torch >= 2.8 (torch {torch.__version__})")

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.nn.functional.gelu(x @ w), dim=-1) + x.sum(-1, keepdim=True)

    graph = torch.fx.symbolic_trace(f)
    x, w = torch.randn(8, 32, device="cuda"), torch.randn(32, 32, device="cuda")
    with torchshim.make_adaptor(adaptor) as compiler:
        compiler.initialize_cache(tmp_path)
        _, handle = compiler.compile(graph, [x, w], dict(CHEAP), runtime_shape=8)
    assert handle is not None
    with torchshim.make_adaptor(adaptor) as loader:
        loader.initialize_cache(tmp_path)
        fn = loader.load(handle.to_json(), graph, [x, w], graph_index=0, runtime_shape=8)
        static_x, static_w = x.clone(), w.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn(static_x, static_w)
        torch.cuda.current_stream().wait_stream(stream)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            out = fn(static_x, static_w)
        for _ in range(2):
            new = torch.randn(8, 32, device="cuda")
            static_x.copy_(new)
            captured.replay()
            torch.testing.assert_close(out, f(new, w), atol=2e-5, rtol=1e-4)
