"""Matrix cells and rendering, from synthetic env results (the real ones come from tox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchshim.cli import main
from torchshim.matrix import (
    aggregate_cell,
    data_document,
    load_results,
    read_data,
    render,
    write_result,
)


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


def _render(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "matrix",
            "render",
            "--results",
            str(tmp_path / "results"),
            "--out",
            str(tmp_path / "MATRIX.md"),
            *extra,
        ]
    )


def _dated(env: str, series: str, date: str, passed: int = 3) -> dict[str, object]:
    result = _result(env, series, True)
    result["date"] = date
    result["pytest"]["passed"] = passed  # type: ignore[index]
    return result


def test_render_keeps_envs_without_a_new_result_marked_with_their_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a full render, then one series env re-run: the other series keep their rows
    write_result(tmp_path / "results" / "torch29.json", _dated("torch29", "2.9", "2026-11-01"))
    write_result(tmp_path / "results" / "torch210.json", _dated("torch210", "2.10", "2026-11-01"))
    assert _render(tmp_path, "--replace") == 0
    (tmp_path / "results" / "torch29.json").unlink()
    write_result(
        tmp_path / "results" / "torch210.json", _dated("torch210", "2.10", "2026-12-01", 7)
    )
    capsys.readouterr()
    assert _render(tmp_path) == 0
    assert "kept without a new result: torch29 (2026-11-01)" in capsys.readouterr().out
    text = (tmp_path / "MATRIX.md").read_text()
    assert "| torch29 | 2.9.0 | 2.9 | torch_2_11 | 3 passed," in text
    assert "| 2026-11-01 (kept: no new result) |" in text
    assert "| torch210 | 2.10.0 | 2.10 | torch_2_11 | 7 passed," in text
    assert "| all hooks ok | 2026-12-01 |" in text
    assert "| hook | 2.9 (kept, 2026-11-01) | 2.10 |" in text
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert sorted(data["envs"]) == ["torch210", "torch29"]
    assert data["envs"]["torch210"]["pytest"]["passed"] == 7
    assert data["envs"]["torch29"]["date"] == "2026-11-01"
    assert data["kept"] == ["torch29"]


def test_render_of_the_same_results_is_the_same_with_or_without_the_data_file(
    tmp_path: Path,
) -> None:
    results = [_dated("torch29", "2.9", "2026-11-01"), _dated("torch210", "2.10", "2026-11-02")]
    data = tmp_path / "matrix.json"
    write_result(data, data_document(results))
    assert render(read_data(data)) == render(results)


def test_render_without_earlier_data_refuses_instead_of_dropping_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_result(tmp_path / "results" / "torch213.json", _dated("torch213", "2.13", "2026-12-01"))
    (tmp_path / "MATRIX.md").write_text("the earlier matrix\n")
    assert _render(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"there is no {tmp_path / 'matrix.json'}" in err
    assert "2.5, 2.6, 2.7, 2.8, 2.9, 2.10, 2.11, 2.12, 2.14, 2.15" in err
    assert "--replace" in err
    assert (tmp_path / "MATRIX.md").read_text() == "the earlier matrix\n"
    assert not (tmp_path / "matrix.json").exists()


def test_render_with_unreadable_earlier_data_refuses_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_result(tmp_path / "results" / "torch213.json", _dated("torch213", "2.13", "2026-12-01"))
    (tmp_path / "matrix.json").write_text("{not json")
    assert _render(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not JSON" in err and "--replace" in err
    assert (tmp_path / "matrix.json").read_text() == "{not json"
    assert not (tmp_path / "MATRIX.md").exists()


def test_render_replace_renders_only_the_new_results(tmp_path: Path) -> None:
    write_result(tmp_path / "results" / "torch213.json", _dated("torch213", "2.13", "2026-12-01"))
    (tmp_path / "matrix.json").write_text("{not json")
    assert _render(tmp_path, "--replace") == 0
    assert "| hook | 2.13 |" in (tmp_path / "MATRIX.md").read_text()
    assert list(json.loads((tmp_path / "matrix.json").read_text())["envs"]) == ["torch213"]


def test_render_of_every_series_needs_no_earlier_data(tmp_path: Path) -> None:
    from torchshim.shims import SUPPORTED_SERIES

    for s in SUPPORTED_SERIES:
        env = f"torch{s.major}{s.minor}"
        write_result(tmp_path / "results" / f"{env}.json", _dated(env, str(s), "2026-12-01"))
    assert _render(tmp_path) == 0
    assert len(json.loads((tmp_path / "matrix.json").read_text())["envs"]) == len(SUPPORTED_SERIES)
    assert "kept" not in (tmp_path / "MATRIX.md").read_text().split("## Environments")[1]


MATRIX = Path(__file__).resolve().parents[2] / "matrix"


@pytest.mark.skipif(
    not (MATRIX / "MATRIX.md").exists(),
    reason="no matrix/MATRIX.md in this tree (an sdist ships tests but not the matrix results)",
)
def test_tracked_matrix_is_the_rendering_of_the_tracked_data() -> None:
    # reads only: matrix/MATRIX.md is what `torchshim matrix render` makes of matrix/matrix.json
    root = MATRIX
    data = root / "matrix.json"
    kept = json.loads(data.read_text(encoding="utf-8")).get("kept", [])
    assert render(read_data(data), kept) == (root / "MATRIX.md").read_text(encoding="utf-8")
