"""Matrix cells and rendering, from synthetic env results (the real ones come from tox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchshim.cli import main
from torchshim.matrix import aggregate_cell, load_results, render, write_result


def test_aggregate_cell() -> None:
    assert aggregate_cell([]) == {"status": "none", "tests": 0}
    assert aggregate_cell([("pass", ""), ("pass", "")])["status"] == "pass"
    mixed = aggregate_cell([("pass", ""), ("fail", "boom"), ("skip", "n/a")])
    assert mixed["status"] == "fail"
    assert mixed["reason"] == "boom"
    assert aggregate_cell([("skip", "needs 2.8"), ("skip", "needs 2.8")]) == {
        "status": "skip",
        "tests": 2,
        "reason": "needs 2.8",
    }
    assert aggregate_cell([("pass", ""), ("skip", "x")])["status"] == "pass"


def _result(env: str, series: str, ok: bool) -> dict[str, object]:
    hook_status = "ok" if ok else "missing"
    return {
        "env": env,
        "series": series,
        "torch_version": f"{series}.0",
        "doctor": {
            "ok": ok,
            "shim": "torch_2_11",
            "broken_adaptors": [] if ok else ["inductor"],
            "hooks": [{"name": "compile_fx", "status": hook_status, "detail": "gone"}],
        },
        "pytest": {"passed": 3, "failed": 0, "skipped": 1, "exitstatus": 0, "duration_s": 1.0},
        "cells": {"inductor": {"compile": {"status": "pass", "tests": 3}}},
    }


def test_results_are_ordered_by_series_and_rendered(tmp_path: Path) -> None:
    write_result(tmp_path / "torch210.json", _result("torch210", "2.10", True))
    write_result(tmp_path / "torch29.json", _result("torch29", "2.9", False))
    (tmp_path / "other.json").write_text(json.dumps({"unrelated": True}))
    results = load_results(tmp_path)
    assert [r["series"] for r in results] == ["2.9", "2.10"]  # numeric, not lexicographic
    text = render(results)
    assert "| `compile_fx` | **missing** gone | ok |" in text
    assert "BROKEN: inductor" in text
    assert "| inductor | compile | ✅ | ✅ |" in text
    assert "| inductor_standalone | compile | not run | not run |" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_render_leaves_out_volatile_figures(tmp_path: Path) -> None:
    # the same results rendered twice, with different timings, give the same text
    a, b = _result("torch210", "2.10", True), _result("torch210", "2.10", True)
    b["pytest"]["duration_s"] = 99.0  # type: ignore[index]
    assert render([a]) == render([b])


def test_render_to_a_missing_directory_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_result(tmp_path / "torch210.json", _result("torch210", "2.10", True))
    out = tmp_path / "no" / "such" / "dir" / "x.md"
    code = main(["matrix", "render", "--results", str(tmp_path), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err and str(out) in err
    assert not out.exists()
