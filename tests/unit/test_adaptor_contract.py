"""The adaptor contract without compiling: handles, cache directories, errors, selection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import torchshim
from torchshim.adaptors import (
    CACHE_FORMAT_VERSION,
    InductorHandle,
    StandaloneHandle,
    handle_from_json,
    make_adaptor,
)

HAS_STANDALONE = "supports_standalone_compile" in torchshim.capabilities()
ENTRY = "ab" * 16


def test_handles_round_trip_through_json() -> None:
    h = InductorHandle(
        "inductor", CACHE_FORMAT_VERSION, "abc", 8, ENTRY, key="fkey", module_path="x/y.py"
    )
    assert handle_from_json(h.to_json()) == h
    g = InductorHandle("inductor", CACHE_FORMAT_VERSION, "abc", None, ENTRY, None, guards=("[]",))
    assert handle_from_json(g.to_json()) == g  # guards come back as a tuple
    s = StandaloneHandle(
        "inductor_standalone", CACHE_FORMAT_VERSION, "abc", None, ENTRY, "a.bin", "binary"
    )
    assert StandaloneHandle.from_json(s.to_json()) == s
    with pytest.raises(AttributeError):
        s.path = "elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        json.dumps({"kind": "mystery"}),
        json.dumps({"kind": "inductor", "adaptor": "inductor"}),
        json.dumps(
            {
                "kind": "inductor",
                "adaptor": "inductor",
                "format_version": 1,
                "compiler_hash": "h",
                "runtime_shape": None,
                "entry": "../../etc",
                "key": "k",
            }
        ),
        json.dumps(
            {
                "kind": "inductor",
                "adaptor": "inductor",
                "format_version": 1,
                "compiler_hash": "h",
                "runtime_shape": None,
                "entry": "ab" * 16,
                "key": "k",
                "guards": "Eq(s0, 2)",
            }
        ),
        json.dumps(
            {
                "kind": "inductor_standalone",
                "adaptor": "inductor_standalone",
                "format_version": 1,
                "compiler_hash": "h",
                "runtime_shape": None,
                "entry": "ab" * 16,
                "path": "/abs/a.bin",
                "artifact_format": "binary",
            }
        ),
        json.dumps(
            {
                "kind": "inductor_standalone",
                "adaptor": "inductor_standalone",
                "format_version": 1,
                "compiler_hash": "h",
                "runtime_shape": None,
                "entry": "ab" * 16,
                "path": "../out.bin",
                "artifact_format": "binary",
            }
        ),
    ],
)
def test_malformed_handles_are_typed_load_errors(text: str) -> None:
    with pytest.raises(torchshim.HandleFormatError):
        handle_from_json(text)
    assert issubclass(torchshim.HandleFormatError, torchshim.LoadError)


def test_prefix_sets_the_shared_base_and_close_restores_environment(tmp_path: Path) -> None:
    before = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    with make_adaptor("inductor") as adaptor:
        adaptor.initialize_cache(tmp_path / "backbone", prefix="backbone")
        assert adaptor.base_cache_dir == tmp_path
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
        assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
        # a second part of the same model shares the base (the store), its entries its own
        with make_adaptor("inductor") as head:
            head.initialize_cache(tmp_path / "head", prefix="head")
            assert head.entry_id("k", None) != adaptor.entry_id("k", None)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
        assert (tmp_path / "entries").is_dir()
    after = {k: os.environ.get(k) for k in before}
    assert after == before


@pytest.mark.parametrize("preset", [None, "/opt/cuda/bin/ptxas"])
def test_triton_is_pointed_at_torchs_ptxas_while_the_cache_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str | None
) -> None:
    """A compiling and a loading process must hash Triton kernels with the same ptxas version:
    torch's own ptxas where torch ships one (CUDA wheels), from before any code generation; a
    user's choice is kept; closing the adaptor restores the environment."""
    if preset is None:
        monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    else:
        monkeypatch.setenv("TRITON_PTXAS_PATH", preset)
    shipped = Path(torch.__file__).parent / "bin" / "ptxas"
    expected = preset or (
        str(shipped) if shipped.is_file() and os.access(shipped, os.X_OK) else None
    )
    with make_adaptor("inductor") as adaptor:
        adaptor.initialize_cache(tmp_path / "cache")
        assert os.environ.get("TRITON_PTXAS_PATH") == expected
    assert os.environ.get("TRITON_PTXAS_PATH") == preset


def test_two_bases_at_once_are_refused(tmp_path: Path) -> None:
    with make_adaptor("inductor") as one, make_adaptor("inductor") as two:
        one.initialize_cache(tmp_path / "a")
        with pytest.raises(torchshim.AdaptorConfigError, match="Close the other adaptor"):
            two.initialize_cache(tmp_path / "b")


def test_prefix_must_match_cache_dir(tmp_path: Path) -> None:
    with make_adaptor("inductor") as adaptor, pytest.raises(torchshim.AdaptorConfigError):
        adaptor.initialize_cache(tmp_path / "backbone", prefix="head")


def test_unusable_cache_dir_is_a_typed_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with (
        make_adaptor("inductor") as adaptor,
        pytest.raises(torchshim.CacheDirError, match="cannot create"),
    ):
        adaptor.initialize_cache(blocker / "cache")


def test_compile_before_initialize_cache_is_refused() -> None:
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    with make_adaptor("inductor") as adaptor, pytest.raises(torchshim.AdaptorConfigError):
        adaptor.compile(gm, [torch.ones(2)], {})


def test_unknown_adaptor_name() -> None:
    with pytest.raises(torchshim.UnknownAdaptorError, match="inductor_standalone"):
        make_adaptor("tensorrt")


def test_auto_picks_standalone_where_torch_has_it() -> None:
    adaptor = make_adaptor("auto")
    assert adaptor.name == ("inductor_standalone" if HAS_STANDALONE else "inductor")


@pytest.mark.skipif(HAS_STANDALONE, reason="this torch has standalone_compile")
def test_standalone_on_old_torch_names_the_series_that_have_it() -> None:
    with pytest.raises(torchshim.CapabilityUnavailable) as err:
        make_adaptor("inductor_standalone")
    assert "2.8" in str(err.value) and "2.15" in str(err.value)


def test_foreign_handles_are_rejected_as_misses(tmp_path: Path) -> None:
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    with make_adaptor("inductor") as adaptor:
        adaptor.initialize_cache(tmp_path)
        good_hash = adaptor.compute_hash()
        cases = [
            InductorHandle("eager", CACHE_FORMAT_VERSION, good_hash, None, ENTRY, key="k"),
            InductorHandle("inductor", CACHE_FORMAT_VERSION + 1, good_hash, None, ENTRY, key="k"),
            InductorHandle("inductor", CACHE_FORMAT_VERSION, "other-torch", None, ENTRY, key="k"),
        ]
        for handle in cases:
            with pytest.raises(torchshim.ForeignHandleError):
                adaptor.load(handle, gm, [torch.ones(2)], 0)
        missing = InductorHandle("inductor", CACHE_FORMAT_VERSION, good_hash, None, ENTRY, "fk")
        with pytest.raises(torchshim.ArtifactMissingError, match="recompile"):
            adaptor.load(missing, gm, [torch.ones(2)], 0)


@pytest.mark.skipif(not HAS_STANDALONE, reason="standalone_compile needs torch >= 2.8")
def test_missing_standalone_entries_are_misses(tmp_path: Path) -> None:
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    with make_adaptor("inductor_standalone") as adaptor:
        adaptor.initialize_cache(tmp_path)
        h = adaptor.compute_hash()
        gone = StandaloneHandle(
            "inductor_standalone", CACHE_FORMAT_VERSION, h, None, ENTRY, "artifact.bin", "binary"
        )
        with pytest.raises(torchshim.ArtifactMissingError):
            adaptor.load(gone, gm, [torch.ones(2)], 0)


def test_compute_hash_factors_cover_the_compiler(tmp_path: Path) -> None:
    adaptor = make_adaptor("inductor")
    factors = adaptor.compute_hash_factors()
    for key in (
        "system",
        "torch_key",
        "inductor_config",
        "functorch_config",
        "shim",
        "cache_format_version",
        "torch_series",
    ):
        assert factors[key], key
    assert adaptor.compute_hash() == adaptor.compute_hash()
    assert len(adaptor.compute_hash()) == 20


class WithParams(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).relu()


@pytest.mark.parametrize("name", ["inductor", "auto"])
def test_parameters_as_constants_are_rejected_up_front(tmp_path: Path, name: str) -> None:
    gm = torch.fx.symbolic_trace(WithParams())
    with make_adaptor(name) as adaptor:
        adaptor.initialize_cache(tmp_path)
        with pytest.raises(torchshim.UnsupportedGraphError, match="Lift them to inputs"):
            adaptor.compile(gm, [torch.ones(2, 4)], {})


def test_eager_supports_parameter_constants(tmp_path: Path) -> None:
    module = WithParams()
    gm = torch.fx.symbolic_trace(module)
    with make_adaptor("eager") as adaptor:
        adaptor.initialize_cache(tmp_path)
        fn, handle = adaptor.compile(gm, [torch.ones(2, 4)], {})
        assert handle is None and fn is not None
        assert torch.equal(fn(torch.ones(2, 4)), module(torch.ones(2, 4)))
        assert adaptor.load(None, gm, [], 0) is gm
