"""Standalone-adaptor behaviour beyond the round trip: artifact formats, annotated graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchshim
from torchshim.adaptors import make_adaptor

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(
        "supports_standalone_compile" not in torchshim.capabilities(),
        reason="standalone_compile needs torch >= 2.8",
    ),
]


def annotated(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # under `from __future__ import annotations` these annotations are strings in the graph
    return torch.relu(x @ w) * 3


@pytest.mark.parametrize("artifact_format", ["binary", "unpacked"])
def test_annotated_graph_saves_and_loads(tmp_path: Path, artifact_format: str) -> None:
    gm = torch.fx.symbolic_trace(annotated)
    assert any(isinstance(n.type, str) for n in gm.graph.nodes)
    args = [torch.randn(5, 4), torch.randn(4, 6)]
    with make_adaptor("inductor_standalone", artifact_format=artifact_format) as adaptor:
        adaptor.initialize_cache(tmp_path / "part", prefix="part")
        fn, handle = adaptor.compile(gm, args, {}, runtime_shape=5)
        assert fn is not None and handle is not None
        entry = adaptor.store.entry_dir(handle.entry)  # type: ignore[union-attr, attr-defined]
        assert (entry / handle.path).exists()  # type: ignore[attr-defined]
        assert (entry / "manifest.json").exists()
        # published atomically, no leftovers: only the staging directory the compiled graph's
        # kernels run from (their tuning results are written there), kept until close
        assert [p.name.split("-")[0] for p in (tmp_path / "tmp").iterdir()] == ["stage"]
        loaded = adaptor.load(handle.to_json(), gm, args, 0, runtime_shape=5)
        torch.testing.assert_close(loaded(*args), annotated(*args))
        torch.testing.assert_close(fn(*args), annotated(*args))
    assert not list((tmp_path / "tmp").iterdir())


def test_unknown_artifact_format_is_refused() -> None:
    with pytest.raises(torchshim.AdaptorConfigError, match="binary"):
        make_adaptor("inductor_standalone", artifact_format="zip")
