"""Check the installed torch's private hooks against the inventory (``matrix/hooks.toml``)."""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from torchshim._version import TorchSeries, installed_torch_version, parse_series, torch_series
from torchshim.config import COMPILERS
from torchshim.shims import REGISTRY, SUPPORTED_SERIES, load_shim_module
from torchshim.shims._inventory import find_elsewhere, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "HookEntry",
    "HookReport",
    "HookResult",
    "HookStatus",
    "hook_report",
    "load_inventory",
]

ADAPTOR_NAMES = COMPILERS


class HookStatus(str, enum.Enum):
    OK = "ok"
    MISSING = "missing"
    MOVED = "moved"
    SIGNATURE_CHANGED = "signature changed"
    NOT_EXPECTED = "not expected"
    UNEXPECTED = "present, not expected"

    @property
    def broken(self) -> bool:
        return self in (HookStatus.MISSING, HookStatus.MOVED, HookStatus.SIGNATURE_CHANGED)


@dataclass(frozen=True)
class HookEntry:
    """One hook of the inventory."""

    name: str
    path: str
    since: TorchSeries
    until: TorchSeries | None
    signatures: dict[TorchSeries, tuple[str, ...]]
    adaptors: tuple[str, ...]
    needed_by: str
    kind: str = "callable"
    moved_from: tuple[str, ...] = ()

    def expected_in(self, series: TorchSeries) -> bool:
        return self.since <= series and (self.until is None or series <= self.until)

    def signature_for(self, series: TorchSeries) -> tuple[str, ...] | None:
        chosen: tuple[str, ...] | None = None
        for first, params in sorted(self.signatures.items()):
            if first <= series:
                chosen = params
        return chosen

    def expected_series(self) -> list[str]:
        return [str(s) for s in SUPPORTED_SERIES if self.expected_in(s)]


@dataclass
class HookResult:
    name: str
    path: str
    status: HookStatus
    expected_in: list[str]
    adaptors: list[str]
    needed_by: str
    expected_signature: list[str] | None = None
    found_signature: list[str] | None = None
    found_at: list[str] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass
class HookReport:
    torch_version: str
    series: str
    supported: bool
    checked_against: str
    shim: str | None
    capabilities: list[str]
    hooks: list[HookResult]

    @property
    def broken(self) -> list[HookResult]:
        return [h for h in self.hooks if h.status.broken]

    @property
    def broken_adaptors(self) -> list[str]:
        hit = {a for h in self.broken for a in h.adaptors}
        return [a for a in ADAPTOR_NAMES if a in hit]

    @property
    def ok(self) -> bool:
        """True when no hook that an adaptor needs is broken."""
        return not self.broken_adaptors

    def to_json(self) -> dict[str, Any]:
        return {
            "torch_version": self.torch_version,
            "series": self.series,
            "supported": self.supported,
            "checked_against": self.checked_against,
            "shim": self.shim,
            "capabilities": self.capabilities,
            "ok": self.ok,
            "broken_adaptors": self.broken_adaptors,
            "counts": {s.value: sum(h.status is s for h in self.hooks) for s in HookStatus},
            "hooks": [h.to_json() for h in self.hooks],
        }


def load_inventory(text: str | None = None) -> list[HookEntry]:
    """Parse the inventory (the packaged ``hooks.toml`` unless ``text`` is given)."""
    if text is None:
        text = resources.files("torchshim").joinpath("hooks.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    entries = []
    for raw in data.get("hook", []):
        entries.append(
            HookEntry(
                name=raw["name"],
                path=raw["path"],
                since=parse_series(raw["since"]),
                until=parse_series(raw["until"]) if "until" in raw else None,
                signatures={
                    parse_series(k): tuple(v) for k, v in raw.get("signatures", {}).items()
                },
                adaptors=tuple(raw.get("adaptors", ())),
                needed_by=raw.get("needed_by", ""),
                kind=raw.get("kind", "callable"),
                moved_from=tuple(raw.get("moved_from", ())),
            )
        )
    return entries


def _check(entry: HookEntry, series: TorchSeries) -> HookResult:
    expected = entry.expected_in(series)
    result = HookResult(
        name=entry.name,
        path=entry.path,
        status=HookStatus.OK,
        expected_in=entry.expected_series(),
        adaptors=list(entry.adaptors),
        needed_by=entry.needed_by,
    )
    found = resolve(entry.path)
    if not expected:
        result.status = HookStatus.UNEXPECTED if found.found else HookStatus.NOT_EXPECTED
        result.found_signature = list(found.parameters) if found.parameters is not None else None
        return result
    want = entry.signature_for(series)
    result.expected_signature = list(want) if want is not None else None
    if not found.found:
        elsewhere = find_elsewhere(entry.path, list(entry.moved_from))
        result.found_at = elsewhere
        if elsewhere:
            result.status = HookStatus.MOVED
            result.detail = "now at " + ", ".join(elsewhere)
        else:
            result.status = HookStatus.MISSING
            result.detail = found.error or "not found in torch's related modules"
        return result
    result.found_signature = list(found.parameters) if found.parameters is not None else None
    if want is not None and found.parameters is not None and tuple(found.parameters) != want:
        result.status = HookStatus.SIGNATURE_CHANGED
        added = [p for p in found.parameters if p not in want]
        removed = [p for p in want if p not in found.parameters]
        bits = []
        if added:
            bits.append("added " + ", ".join(added))
        if removed:
            bits.append("removed " + ", ".join(removed))
        result.detail = "; ".join(bits) or "parameters reordered"
    return result


def hook_report(version: str | None = None) -> HookReport:
    """Check every inventory hook in the installed torch (``version`` overrides the series used
    for expectations, for testing a build whose version string is unusual)."""
    torch_version = version or installed_torch_version()
    series = parse_series(version) if version else torch_series()
    supported = series in REGISTRY
    if supported:
        against = series
    elif series > SUPPORTED_SERIES[-1]:
        against = SUPPORTED_SERIES[-1]
    else:
        against = SUPPORTED_SERIES[0]
    shim_name = REGISTRY.get(series)
    caps = sorted(load_shim_module(shim_name).CAPABILITIES) if shim_name else []
    hooks = [_check(entry, against) for entry in load_inventory()]
    return HookReport(
        torch_version=torch_version,
        series=str(series),
        supported=supported,
        checked_against=str(against),
        shim=shim_name,
        capabilities=caps,
        hooks=hooks,
    )


def dumps(report: HookReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False)
