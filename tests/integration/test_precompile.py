"""``torchshim precompile``: a build step compiles a model's graphs into a cache, and a serving
process then compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchshim

FULL = os.environ.get("TORCHSHIM_FULL", "").strip() == "1"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchshim", "precompile", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_colon_here", "is not module:function"),
        ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
        ("torchshim.demo:no_such_function", "has no function no_such_function"),
        ("torchshim.demo:tokens", "raised TypeError"),
        ("torchshim.demo:build_model", "it must return (model, example_args)"),
    ],
)
def test_a_bad_target_is_one_line(
    tmp_path: Path, target: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchshim.cli import main

    code = main(["precompile", target, "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert not any(tmp_path.rglob("manifest.json"))


def test_precompile_function_runs_the_first_call(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    stats = torchshim.precompile(model, (torch.ones(3, 8),), tmp_path, adaptor="eager")
    assert stats["graphs"] >= 1 and stats["eager"] >= 1 and stats["compiled"] == 0


@pytest.mark.compile
@pytest.mark.skipif(
    not FULL,
    reason="Inductor compiles of the demo model in two processes (about a minute): runs where "
    "TORCHSHIM_FULL=1 (the torch211 env) only",
)
def test_a_serving_process_after_precompile_compiles_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = _cli("torchshim.demo:example", "--cache-dir", str(cache), "--sizes", "2,4")
    assert built.returncode == 0, built.stderr[-3000:]
    assert "graph(s) compiled" in built.stdout
    serve = (
        "import json, torch, torchshim\n"
        "from torchshim.demo import build_model, tokens\n"
        f"fast = torchshim.compile(build_model('cpu'), {str(cache)!r}, compile_sizes=[2, 4])\n"
        "with torch.no_grad():\n"
        "    for batch in (3, 2, 4):\n"
        "        fast(tokens(batch, 'cpu'))\n"
        "print(json.dumps(fast.backend.stats.as_dict()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", serve], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["compiled"] == 0 and stats["loaded"] >= 3, stats
