"""The standalone adaptor's direct CPU load (shims/_direct.py): a graph loaded by running its
generated module with its kernels opened directly gives what torch's loader gives, bit for bit,
at every batch size; graphs whose runtime wrapper does more than call (an input mutated, an
output aliasing an input) get no plan and load through torch's loader, keeping their semantics;
a plan that does not run falls back to torch's loader with one warning."""

from __future__ import annotations

import ast
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import torchshim
from torchshim.adaptors import make_adaptor

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(
        "supports_direct_cpu_load" not in torchshim.capabilities(),
        reason="standalone_compile (and so the direct load) needs torch >= 2.8",
    ),
]


class Block(torch.nn.Module):
    """Shaped like an engine's decoder layer: norm, fused QKV projection, batched attention
    scores, MLP, residuals — addmm, bmm and mm extern kernels beside C++ kernels."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim, bias=False)
        self.up = torch.nn.Linear(dim, 4 * dim)
        self.down = torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm(x)).split(d, dim=-1)
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        h = x + self.out((att @ v).transpose(1, 2).reshape(b, s, d))
        y = h + self.down(torch.nn.functional.gelu(self.up(h)))
        return y, att.mean(dim=1)


def _dynamo(fn: Callable[..., Any], backend: Callable[..., Any], *args: torch.Tensor) -> Any:
    torch.compiler.reset()
    torch._dynamo.mark_dynamic(args[0], 0)
    return torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)


def _compile_once(adaptor: Any, fn: Callable[..., Any], *args: torch.Tensor) -> Any:
    """Compile ``fn``'s one Dynamo graph (batch dynamic) with ``adaptor``; its handle."""
    handles: list[Any] = []

    def backend(gm: Any, example_inputs: list[Any]) -> Any:
        compiled, handle = adaptor.compile(gm, example_inputs, {}, None)
        handles.append(handle)
        return compiled

    copies = [a.clone() for a in args]  # an input the graph mutates stays as the caller made it
    with torch.no_grad():
        _dynamo(fn, backend, *copies)(*copies)
    assert len(handles) == 1
    return handles[0]


def _loaded(adaptor: Any, fn: Callable[..., Any], handle: Any, *args: torch.Tensor) -> Any:
    """``fn`` through Dynamo with the handle loaded for its graph: traced now, on inputs like the
    compile's (the batch marked dynamic), so that later calls at other batch sizes (>= 2) run it."""

    def backend(gm: Any, example_inputs: list[Any]) -> Any:
        return adaptor.load(handle, gm, example_inputs, 0, None)

    first = [a.clone() for a in args]
    compiled = _dynamo(fn, backend, *first)
    with torch.no_grad():
        compiled(*first)
    return compiled


@pytest.fixture(scope="module")
def block() -> Block:
    torch.manual_seed(0)
    return Block().eval()


def test_direct_load_equals_torch_loader(
    tmp_path: Path, block: Block, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(3, 8, 32)
    with make_adaptor("inductor_standalone") as adaptor:
        adaptor.initialize_cache(tmp_path / "block", prefix="block")
        handle = _compile_once(adaptor, block, x)
        assert handle is not None
        entry = adaptor.store.entry_dir(handle.entry)  # type: ignore[union-attr]
        assert (entry / "direct" / "plan.json").is_file(), "no direct-load plan was written"
        tree = ast.parse((entry / "direct" / "module.py").read_text())
        imported = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        compiler = {m for m in imported if m and m.startswith("torch._inductor")}
        assert compiler <= {"torch._inductor.hooks", "torch._inductor.utils"}, compiler

        monkeypatch.setenv("TORCHSHIM_DIRECT_LOAD", "0")
        through_torch = _loaded(adaptor, block, handle, x)
        with torch.no_grad():
            expected = {
                b: through_torch(torch.randn(b, 8, 32, generator=_gen(b))) for b in (2, 3, 8)
            }
        assert adaptor.direct_loads == 0
        monkeypatch.delenv("TORCHSHIM_DIRECT_LOAD")
        direct = _loaded(adaptor, block, handle, x)
        for b, (y_ref, att_ref) in expected.items():
            with torch.no_grad():
                y, att = direct(torch.randn(b, 8, 32, generator=_gen(b)))
            assert torch.equal(y, y_ref) and torch.equal(att, att_ref), f"batch {b} differs"
            assert y.stride() == y_ref.stride() and att.stride() == att_ref.stride()
        assert adaptor.direct_loads == 1
        with torch.no_grad():
            eager, _ = block(torch.randn(5, 8, 32, generator=_gen(5)))
            y, _ = direct(torch.randn(5, 8, 32, generator=_gen(5)))
        torch.testing.assert_close(y, eager, atol=1e-4, rtol=1e-4)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mutates_input(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    cache.add_(x.sum(0))  # a KV-cache-like write into an input
    return torch.relu(x) * 2


def returns_input_view(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tanh(x @ w), x.view(x.shape[0], -1, 2)


@pytest.mark.parametrize("fn", [mutates_input, returns_input_view], ids=lambda f: f.__name__)
def test_graph_needing_more_than_a_call_loads_through_torch(tmp_path: Path, fn: Any) -> None:
    x = torch.randn(4, 16)
    other = torch.zeros(16) if fn is mutates_input else torch.randn(16, 8)
    with make_adaptor("inductor_standalone") as adaptor:
        adaptor.initialize_cache(tmp_path / "edge", prefix="edge")
        handle = _compile_once(adaptor, fn, x, other)
        if handle is None:  # torch 2.8 and 2.10 save no artifact of a graph returning an input view
            pytest.skip("this series saves no artifact of this graph (AOTAutograd's cache)")
        entry = adaptor.store.entry_dir(handle.entry)  # type: ignore[union-attr]
        assert not (entry / "direct").exists(), "a graph with more than a call was planned"
        loaded = _loaded(adaptor, fn, handle, x, other)
        y = torch.randn(5, 16)
        with torch.no_grad():
            if fn is mutates_input:
                cache = torch.zeros(16)
                out = loaded(y, cache)
                torch.testing.assert_close(cache, y.sum(0))
                torch.testing.assert_close(out, torch.relu(y) * 2)
            else:
                _, view = loaded(y, other)
                assert view.data_ptr() == y.data_ptr() and view._base is not None
        assert adaptor.direct_loads == 0


@contextlib.contextmanager
def _fx_compiled(cache: Path, f: Callable[..., Any], args: list[torch.Tensor]) -> Iterator[Any]:
    """``f`` traced with FX and compiled for its first argument's batch: adaptor, graph, handle."""
    gm = torch.fx.symbolic_trace(f)
    with make_adaptor("inductor_standalone") as adaptor:
        adaptor.initialize_cache(cache, prefix=cache.name)
        _, handle = adaptor.compile(gm, args, {}, runtime_shape=args[0].shape[0])
        assert handle is not None
        yield adaptor, gm, handle


def test_misaligned_input_and_grad_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.relu(x @ w) + x.sum(-1, keepdim=True), dim=-1)

    args = [torch.randn(6, 16), torch.randn(16, 16)]
    with _fx_compiled(tmp_path / "align", f, args) as (adaptor, gm, handle):
        loaded = adaptor.load(handle.to_json(), gm, args, 0, runtime_shape=6)
        assert adaptor.direct_loads == 1
        monkeypatch.setenv("TORCHSHIM_DIRECT_LOAD", "0")
        through_torch = adaptor.load(handle.to_json(), gm, args, 0, runtime_shape=6)
        assert adaptor.direct_loads == 1
        flat = torch.randn(6 * 16 + 1)
        x = flat[1:].view(6, 16)  # 4 bytes past an aligned address
        assert x.data_ptr() % 16
        torch.testing.assert_close(loaded(x, args[1]), f(x, args[1]), atol=1e-5, rtol=1e-5)
        assert torch.equal(loaded(x, args[1]), through_torch(x, args[1]))
        # grad mode on and a weight that requires grad, as a careless caller leaves them: the
        # inference graph runs without grad through either loader
        w = args[1].clone().requires_grad_()
        assert loaded(args[0], w).requires_grad == through_torch(args[0], w).requires_grad


def test_plan_that_does_not_run_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x @ w) * 3

    args = [torch.randn(5, 8), torch.randn(8, 4)]
    with _fx_compiled(tmp_path / "fallback", f, args) as (adaptor, gm, handle):
        # a verified copy of the entry whose plan names a kernel that is not there (what a plan
        # from a torch whose generated code changed shape would do)
        workdir = adaptor._checkout(handle, 0)  # type: ignore[attr-defined]
        plan = workdir / "direct" / "plan.json"
        plan.write_text(plan.read_text().replace(".so", ".missing.so"))
        with caplog.at_level(logging.WARNING, logger="torchshim"):
            fn = adaptor._load(handle, workdir, gm, args, 0)  # type: ignore[attr-defined]
        assert adaptor.direct_loads == 0
        assert any("direct load failed" in r.getMessage() for r in caplog.records)
        torch.testing.assert_close(fn(*args), f(*args))


def test_direct_load_switch_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchshim import config

    monkeypatch.setenv("TORCHSHIM_DIRECT_LOAD", "sometimes")
    with pytest.raises(torchshim.ConfigError, match="TORCHSHIM_DIRECT_LOAD"):
        config.check_environment()
    monkeypatch.setenv("TORCHSHIM_DIRECT_LOAD", "off")
    assert config.direct_load() is False
    monkeypatch.delenv("TORCHSHIM_DIRECT_LOAD")
    assert config.direct_load() is True
