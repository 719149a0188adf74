"""The matrix: what each tox env recorded, rendered as ``matrix/MATRIX.md``.

Each series env writes ``matrix/results/<env>.json`` at the end of its pytest session: the doctor
report of its torch, the pytest outcome and the adaptor x feature cells its tests filled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torchshim._version import parse_series

__all__ = ["FEATURES", "aggregate_cell", "load_results", "render", "write_result"]

ADAPTORS = ("eager", "inductor", "inductor_standalone")
#: Features shown per adaptor, in column order, with their headings.
FEATURES: dict[str, str] = {
    "compile": "compile",
    "load_fresh_process": "load in a fresh process",
    "load_relocated": "load after relocation",
    "third_party_model": "third-party model, compile + load (Dynamo, dynamic batch)",
}

_SYMBOL = {"pass": "✅", "fail": "❌", "skip": "➖", "xfail": "⚠️"}


def aggregate_cell(outcomes: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Fold test outcomes ``(outcome, reason)`` of one cell into one cell value."""
    items = list(outcomes)
    if not items:
        return {"status": "none", "tests": 0}
    statuses = [o for o, _ in items]
    for status in ("fail", "xfail"):
        if status in statuses:
            reasons = sorted({r for o, r in items if o == status and r})
            return {"status": status, "tests": len(items), "reason": "; ".join(reasons)[:300]}
    if all(s == "skip" for s in statuses):
        reasons = sorted({r for _, r in items if r})
        return {"status": "skip", "tests": len(items), "reason": "; ".join(reasons)[:300]}
    return {"status": "pass", "tests": sum(s == "pass" for s in statuses)}


def write_result(path: Path, data: dict[str, Any]) -> None:
    """Write one env's result atomically (a crash leaves the previous file intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every env result under ``results_dir``, ordered by torch series."""
    results = []
    for file in sorted(results_dir.glob("*.json")):
        data = json.loads(file.read_text(encoding="utf-8"))
        if "doctor" in data and "series" in data:
            results.append(data)
    return sorted(results, key=lambda d: parse_series(d["series"]))


def _cell_text(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("status") == "none":
        return "not run"
    status = str(cell["status"])
    text = _SYMBOL.get(status, status)
    if cell.get("reason"):
        text += " " + str(cell["reason"]).replace("|", "\\|").replace("\n", " ")
    return text


def render(results: list[dict[str, Any]]) -> str:
    """Markdown: series x hooks, then series x adaptors x features."""
    lines = [
        "# torchshim matrix",
        "",
        "Rendered by `torchshim matrix render` from `matrix/results/*.json`, which each tox env",
        "(`torch25` ... `torch215`) writes at the end of its test run. Do not edit by hand.",
        "",
        "## Environments",
        "",
        "| env | torch | series | shim | tests | doctor |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.get("pytest", {})
        tests = (
            f"{p.get('passed', 0)} passed, {p.get('failed', 0)} failed, "
            f"{p.get('skipped', 0)} skipped, {p.get('xfailed', 0)} xfailed "
            f"(exit {p.get('exitstatus', '?')})"
        )
        doctor = (
            "all hooks ok"
            if r["doctor"].get("ok")
            else "BROKEN: " + ", ".join(r["doctor"].get("broken_adaptors", []))
        )
        lines.append(
            f"| {r.get('env', '?')} | {r['torch_version']} | {r['series']} | "
            f"{r['doctor'].get('shim')} | {tests} | {doctor} |"
        )
    lines += ["", "## Private hooks × series", ""]
    lines.append("ok = present with the expected signature; n/a = not expected in that series.")
    lines.append("")
    header = "| hook | " + " | ".join(r["series"] for r in results) + " |"
    lines += [header, "|---|" + "---|" * len(results)]
    names: list[str] = []
    for r in results:
        for h in r["doctor"]["hooks"]:
            if h["name"] not in names:
                names.append(h["name"])
    for name in names:
        row = [f"`{name}`"]
        for r in results:
            hook = next((h for h in r["doctor"]["hooks"] if h["name"] == name), None)
            if hook is None:
                row.append("?")
            elif hook["status"] == "ok":
                row.append("ok")
            elif hook["status"] in ("not expected", "present, not expected"):
                row.append("n/a")
            else:
                row.append(f"**{hook['status']}** {hook.get('detail', '')}".strip())
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Adaptors × features × series", ""]
    lines.append(
        "✅ passed; ❌ failed; ➖ not applicable (reason given); ⚠️ expected failure (reason given)."
    )
    lines.append("")
    header = "| adaptor | feature | " + " | ".join(r["series"] for r in results) + " |"
    lines += [header, "|---|---|" + "---|" * len(results)]
    for adaptor in ADAPTORS:
        for feature, title in FEATURES.items():
            row = [adaptor, title]
            for r in results:
                row.append(_cell_text(r.get("cells", {}).get(adaptor, {}).get(feature)))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
