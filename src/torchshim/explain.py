"""``torchshim cache explain``: why did a process miss? Which key factor differs between two cache
entries, or between an entry and the running process (torch build, device, config, graph, ...)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from torchshim.cache import CacheStore, EntryInfo
from torchshim.errors import CacheDirError

__all__ = ["CATEGORIES", "GROUPS", "check", "explain", "factors_of"]

#: What each factor stands for, in words an operator looks for.
CATEGORIES: dict[str, str] = {
    "torch_key": "torch build (hash of torch's sources)",
    "torch_series": "torch series",
    "shim": "torchshim shim module",
    "system": "device, CUDA/ROCm and Triton versions",
    "inductor_config": "Inductor configuration",
    "functorch_config": "AOTAutograd configuration",
    "compiler_config": "compiler config passed to the backend",
    "adaptor": "adaptor",
    "cache_format_version": "torchshim cache format",
    "backend_format": "torchshim backend format",
    "graph": "graph (code and input metadata)",
    "runtime_shape": "batch size (general or specialised)",
    "rank": "rank",
    "compiler": "compiler hash (all compiler factors together)",
}


def factors_of(entry: EntryInfo) -> dict[str, str]:
    meta = entry.meta
    factors: dict[str, str] = {}
    for source in (meta.get("factors"), meta.get("backend_factors")):
        if isinstance(source, dict):
            factors.update({str(k): str(v) for k, v in source.items()})
    if "runtime_shape" in meta:
        factors["runtime_shape"] = json.dumps(meta.get("runtime_shape"))
    return factors


def _find(stores: Sequence[CacheStore], prefix: str, extra: Sequence[EntryInfo] = ()) -> EntryInfo:
    found = [e for store in stores for e in store.entries() if e.id.startswith(prefix)]
    found += [e for e in extra if e.id.startswith(prefix) and e.id not in {f.id for f in found}]
    if not found:
        raise CacheDirError(
            f"no cache entry starts with {prefix!r}; `torchshim cache info --entries` lists them"
        )
    if len(found) > 1:
        raise CacheDirError(
            f"{len(found)} entries start with {prefix!r}; give more characters of the id"
        )
    return found[0]


def _current(entry: EntryInfo) -> dict[str, str]:
    from torchshim.adaptors import make_adaptor

    adaptor = make_adaptor(str(entry.meta.get("adaptor", "inductor")))
    return {str(k): str(v) for k, v in adaptor.compute_hash_factors().items()}


def _short(value: str | None) -> str:
    if value is None:
        return "(absent)"
    return value if len(value) <= 48 else value[:45] + "..."


def explain(
    stores: Sequence[CacheStore],
    entry_a: str,
    entry_b: str | None,
    extra: Sequence[EntryInfo] = (),
) -> tuple[list[str], bool]:
    """Lines for the operator, and whether any factor differs (``extra``: more entries to look
    in, e.g. the remote tier's)."""
    a = _find(stores, entry_a, extra)
    left = factors_of(a)
    if entry_b is None:
        right, right_name = _current(a), "this process"
        names = [k for k in left if k in right]  # the graph is not known to this process
    else:
        b = _find(stores, entry_b, extra)
        right, right_name = factors_of(b), f"entry {b.id[:12]}"
        names = sorted(set(left) | set(right))
    differing = [k for k in names if left.get(k) != right.get(k)]
    shown = [k for k in differing if k != "compiler"] or differing
    lines = [f"entry {a.id[:12]} vs {right_name}:"]
    if not shown:
        lines.append("  no key factor differs: the two would share the entry")
        return lines, False
    for name in shown:
        what = CATEGORIES.get(name, name)
        lines.append(f"  {what} differs [{name}]:")
        lines.append(f"    {a.id[:12]}: {_short(left.get(name))}")
        lines.append(f"    {right_name}: {_short(right.get(name))}")
    return lines, True


#: The factor groups an operator asks about before serving, in the order a verdict names them.
GROUPS: dict[str, str] = {
    "torch_key": "torch build",
    "torch_series": "torch build",
    "shim": "torch build",
    "system": "device/CUDA/Triton",
    "python": "Python",
    "inductor_config": "config",
    "functorch_config": "config",
    "compiler_config": "config",
    "adaptor": "adaptor",
    "cache_format_version": "torchshim format",
}


def check(entries: Sequence[EntryInfo]) -> list[dict[str, str]]:
    """For each entry built by a compiler (markers are left out): ``hit`` when every factor the
    entry was built for matches this machine and process, else ``miss: <groups>`` naming what
    differs (torch build first)."""
    import sys

    from torchshim.errors import TorchShimError

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    current: dict[str, dict[str, str] | str] = {}
    rows: list[dict[str, str]] = []
    for entry in entries:
        meta = entry.meta
        if not isinstance(meta.get("factors"), dict):
            continue
        adaptor = str(meta.get("adaptor", "inductor"))
        if adaptor not in current:
            try:
                current[adaptor] = _current(entry)
            except TorchShimError as exc:
                current[adaptor] = f"adaptor {adaptor} is not available here ({exc})"
        here = current[adaptor]
        shape = meta.get("runtime_shape")
        row = {
            "id": entry.id,
            "adaptor": adaptor,
            "shape": "general" if shape is None else json.dumps(shape),
        }
        if isinstance(here, str):
            rows.append({**row, "verdict": "miss: adaptor", "why": here})
            continue
        left = {k: str(v) for k, v in meta["factors"].items()}
        right = dict(here)
        if isinstance(meta.get("python"), str):
            left["python"], right["python"] = str(meta["python"]), python
        differing = [k for k in left if k in right and left[k] != right[k]]
        groups = list(dict.fromkeys(GROUPS.get(k, k) for k in GROUPS if k in differing))
        groups += [k for k in differing if k not in GROUPS]
        verdict = "hit" if not differing else "miss: " + ", ".join(groups)
        why = "; ".join(f"{k}: {_short(left[k])} here {_short(right[k])}" for k in differing)
        rows.append({**row, "verdict": verdict, "why": why})
    return rows
