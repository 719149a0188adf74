"""Every workaround says when it can go; once the oldest supported series makes it dead, this
test fails until it is removed."""

from __future__ import annotations

import re
from pathlib import Path

from torchshim import SUPPORTED_SERIES, parse_series

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "torchshim"
MARK = re.compile(r"Remove when: min torch >= (\d+\.\d+)")


def _marks() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for match in MARK.finditer(line):
                found.append((path.name, lineno, match.group(1)))
    return found


def test_workarounds_are_marked() -> None:
    assert _marks(), "expected at least one dated workaround (e.g. the torch 2.5 config hash)"


def test_no_workaround_outlived_its_series() -> None:
    oldest = SUPPORTED_SERIES[0]
    dead = [f"{f}:{n} (>= {v})" for f, n, v in _marks() if oldest >= parse_series(v)]
    assert not dead, f"oldest supported series is {oldest}; remove these workarounds: {dead}"
