"""Only shims/ touches torch's private compiler modules; only the oracle reads torch.__version__."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "torchshim"
PRIVATE = ("torch._inductor", "torch._dynamo", "torch._functorch", "torch._guards")
CHECKED = sorted(
    p for p in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")] if p.is_file()
)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def violations(source: str, filename: str) -> list[str]:
    """Private-module touches and torch.__version__ reads in one file's source."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            names = [dotted] if dotted else []
        for name in names:
            if any(name == p or name.startswith(p + ".") for p in PRIVATE):
                found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {name}")
            if name == "torch.__version__":
                found.append(f"{filename}:{getattr(node, 'lineno', '?')}: reads {name}")
    return found


def _allowed(path: Path, message: str) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("src/torchshim/shims/"):
        return "reads torch.__version__" not in message
    return rel == "src/torchshim/_version.py" and "reads torch.__version__" in message


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_file_respects_the_boundary(path: Path) -> None:
    bad = [m for m in violations(path.read_text(), str(path)) if not _allowed(path, m)]
    assert not bad, "only torchshim/shims may touch torch internals:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch._inductor.config",
        "from torch._dynamo.utils import counters",
        "import torch\nx = torch._inductor.config.patch",
        "import torch\nv = torch.__version__",
        "from torch._functorch import config",
    ],
)
def test_checker_catches(snippet: str) -> None:
    assert violations(snippet, "<snippet>")


def test_checker_allows_public_torch() -> None:
    assert not violations("import torch\nimport torch.fx\nx = torch.compile", "<snippet>")
