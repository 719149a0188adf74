"""The backend's settings object and its availability rules, with real Dynamo traces (eager
adaptor: nothing to compile, so these stay cheap in every series env)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torchshim  # noqa: E402
from torchshim.cache import CacheStore  # noqa: E402
from torchshim.compile_backend import Backend  # noqa: E402
from torchshim.errors import ConfigError  # noqa: E402
from torchshim.options import BackendOptions  # noqa: E402


def _graph() -> torch.fx.GraphModule:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2

    return torch.fx.symbolic_trace(f)


FULL = os.environ.get("TORCHSHIM_FULL", "").strip() == "1"


@pytest.mark.parametrize(
    "adaptor",
    [
        "eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not FULL, reason="a real Inductor compile: run in the TORCHSHIM_FULL env only"
            ),
        ),
    ],
)
def test_a_lock_held_too_long_compiles_without_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, adaptor: str
) -> None:
    backend = Backend(tmp_path, adaptor=adaptor, lock_timeout=0.2)
    gm, inputs = _graph(), [torch.randn(3, 4)]
    with backend._adaptor() as adaptor:
        factors = backend.key_factors(adaptor, gm, inputs)
        key = backend._key(factors)
        entry = adaptor.entry_id(key, None)
        other = CacheStore(backend.root)  # another process's lock: a separate open file
        with other.lock(entry, 1), caplog.at_level("WARNING", logger="torchshim"):
            fn = backend._one(adaptor, gm, inputs, 0, key, None, factors)
        other.close()
    assert fn is not None and torch.equal(fn(*inputs), gm(*inputs))
    assert backend.stats.uncached == 1
    assert backend.stats.compiled + backend.stats.eager == 1
    assert any("compiling it without the cache" in r.getMessage() for r in caplog.records)
    assert CacheStore(backend.root).entries() == []  # nothing stored by the uncached compile


def test_eager_graphs_are_counted_as_eager_not_compiled(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    fast = torchshim.compile(model, tmp_path, adaptor="eager", compile_sizes=[2])
    with torch.no_grad():
        assert torch.allclose(fast(torch.ones(3, 8)), model(torch.ones(3, 8)))
    stats = fast.backend.stats
    assert stats.compiled == 0 and stats.loaded == 0 and stats.eager >= 1


def test_options_object_and_keywords_build_the_same_backend(tmp_path: Path) -> None:
    options = BackendOptions(cache_dir=tmp_path, compile_sizes=[8, 2, 2], adaptor="eager")
    assert options.compile_sizes == (2, 8)
    first = torchshim.backend(options)
    second = torchshim.backend(tmp_path, compile_sizes=[2, 8], adaptor="eager")
    assert first.options == second.options
    assert torchshim.backend(options, rank=1).root.name == "rank_1"
    with pytest.raises(ConfigError, match="cache_dir given twice"):
        torchshim.backend(tmp_path, cache_dir=tmp_path)


def test_own_errors_come_out_of_dynamo_as_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Linear(4, 4).eval()
    fast = torchshim.compile(model, tmp_path, adaptor="eager")
    monkeypatch.setenv("TORCHSHIM_STRICT", "maybe")  # read when the store is opened, in the trace
    with pytest.raises(ConfigError, match="TORCHSHIM_STRICT") as info, torch.no_grad():
        fast(torch.ones(2, 4))
    assert type(info.value) is ConfigError
