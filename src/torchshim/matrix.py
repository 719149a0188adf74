"""The matrix: what each tox env recorded, rendered as ``matrix/MATRIX.md``.

Each series env writes ``matrix/results/<env>.json`` at the end of its pytest session: the doctor
report of its torch, the pytest outcome and the adaptor x feature cells its tests filled.

A render also writes ``matrix/matrix.json`` (tracked, next to ``MATRIX.md``): every env result it
rendered, with its date. The next render reads it back, so that envs without a new result keep
their row, marked "kept" with the date of their result, instead of disappearing: rendering after
one series env (``tox -e torch213``) updates that series and keeps the other ten. Nothing is ever
parsed back out of the markdown.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from torchshim._version import parse_series
from torchshim.config import COMPILERS

__all__ = [
    "DATA_FORMAT",
    "FEATURES",
    "aggregate_cell",
    "data_document",
    "load_results",
    "merge_results",
    "read_data",
    "render",
    "write_result",
]

#: The version of ``matrix.json``'s layout; a render refuses a file of another version.
DATA_FORMAT = 1

#: Adaptor rows in name order (eager, inductor, inductor_standalone), whatever order the
#: config module lists them in: a re-render of the same results gives the same markdown.
ADAPTORS = tuple(sorted(COMPILERS))
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


def _series_key(result: dict[str, Any]) -> tuple[Any, str]:
    return parse_series(str(result["series"])), str(result.get("env", ""))


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every env result under ``results_dir``, ordered by torch series. A result without a
    ``date`` gets its file's modification date (UTC, ``YYYY-MM-DD``); one without an ``env``
    gets its file's name. A file that is not JSON raises ``ValueError`` naming it."""
    results = []
    for file in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{file} is not JSON ({exc})") from exc
        if isinstance(data, dict) and "doctor" in data and "series" in data:
            data.setdefault("env", file.stem)
            if "date" not in data:
                mtime = datetime.datetime.fromtimestamp(file.stat().st_mtime, datetime.timezone.utc)
                data["date"] = mtime.date().isoformat()
            results.append(data)
    return sorted(results, key=_series_key)


def read_data(path: Path) -> list[dict[str, Any]]:
    """The env results an earlier render wrote to ``path`` (``matrix.json``), each with its
    ``date``. Raises ``FileNotFoundError`` when there is none, ``ValueError`` saying why when it
    cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != DATA_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not matrix data of format {DATA_FORMAT} (found {found!r})")
    envs = data.get("envs")
    if not isinstance(envs, dict):
        raise ValueError(f"{path} has no 'envs' object")
    results = []
    for env, result in envs.items():
        if not (
            isinstance(result, dict)
            and isinstance(result.get("doctor"), dict)
            and "series" in result
            and "date" in result
        ):
            raise ValueError(f"{path}: the result of env {env!r} lacks doctor, series or date")
        try:
            parse_series(str(result["series"]))
        except ValueError as exc:
            raise ValueError(f"{path}: env {env!r}: {exc}") from exc
        results.append({**result, "env": env})
    return sorted(results, key=_series_key)


def merge_results(
    previous: list[dict[str, Any]], new: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """``new`` results plus the ``previous`` ones of envs without a new result, ordered by
    series; and the names of the envs kept from ``previous``."""
    fresh = {str(r.get("env")) for r in new}
    kept = [r for r in previous if str(r.get("env")) not in fresh]
    return sorted([*new, *kept], key=_series_key), [str(r["env"]) for r in kept]


def data_document(results: list[dict[str, Any]], kept: Iterable[str] = ()) -> dict[str, Any]:
    """What ``matrix.json`` holds: every rendered env result, keyed by env, with its date, and
    the envs that render kept from an earlier one (so ``render(read_data(f), kept)`` is the
    markdown written with it)."""
    return {
        "format": DATA_FORMAT,
        "what": "the env results matrix/MATRIX.md was rendered from, with their dates; "
        "written by `torchshim matrix render`, which reads it to keep the rows of envs "
        "without a new result. Do not edit by hand.",
        "envs": {str(r["env"]): {k: v for k, v in r.items() if k != "env"} for r in results},
        "kept": sorted(kept),
    }


def _cell_text(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("status") == "none":
        return "not run"
    status = str(cell["status"])
    text = _SYMBOL.get(status, status)
    if cell.get("reason"):
        text += " " + str(cell["reason"]).replace("|", "\\|").replace("\n", " ")
    return text


def _column(result: dict[str, Any], kept: Collection[str]) -> str:
    """A series' column heading; an env kept from an earlier render says so, with its date."""
    series = str(result["series"])
    if result.get("env") in kept:
        return f"{series} (kept, {result.get('date', '?')})"
    return series


def render(results: list[dict[str, Any]], kept: Collection[str] = ()) -> str:
    """Markdown: series x hooks, then series x adaptors x features. ``kept``: envs whose result
    comes from an earlier render (no new result this time), marked with their date."""
    lines = [
        "# torchshim matrix",
        "",
        "Rendered by `torchshim matrix render` from `matrix/results/*.json`, which each tox env",
        "(`torch25` ... `torch215`) writes at the end of its test run. Do not edit by hand.",
        "An env without a new result keeps the row of its last result (from `matrix/matrix.json`),",
        'marked "kept" with the date of that result.',
        "",
        "## Environments",
        "",
        "| env | torch | series | shim | tests | doctor | result of |",
        "|---|---|---|---|---|---|---|",
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
        date = str(r.get("date", "?"))
        if r.get("env") in kept:
            date += " (kept: no new result)"
        lines.append(
            f"| {r.get('env', '?')} | {r['torch_version']} | {r['series']} | "
            f"{r['doctor'].get('shim')} | {tests} | {doctor} | {date} |"
        )
    lines += ["", "## Private hooks × series", ""]
    lines.append("ok = present with the expected signature; n/a = not expected in that series.")
    lines.append("")
    header = "| hook | " + " | ".join(_column(r, kept) for r in results) + " |"
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
    header = "| adaptor | feature | " + " | ".join(_column(r, kept) for r in results) + " |"
    lines += [header, "|---|---|" + "---|" * len(results)]
    for adaptor in ADAPTORS:
        for feature, title in FEATURES.items():
            row = [adaptor, title]
            for r in results:
                row.append(_cell_text(r.get("cells", {}).get(adaptor, {}).get(feature)))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
