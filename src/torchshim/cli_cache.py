"""The ``torchshim cache`` commands: info, verify, prune, clear, explain. They never turn a
directory into a cache: one that is not a torchshim cache is an error naming the caches below it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torchshim.errors import CacheDirError

__all__ = [
    "cmd_cache_check",
    "cmd_cache_clear",
    "cmd_cache_explain",
    "cmd_cache_export",
    "cmd_cache_import",
    "cmd_cache_info",
    "cmd_cache_prune",
    "cmd_cache_verify",
    "parse_age",
    "parse_size",
    "stores",
]


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        return int(float(number) * scale)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (use bytes or a suffix: 500M, 10G)"
        ) from exc


def parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        return float(number) * scale
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an age: {text!r} (use seconds or a suffix: 30m, 12h, 7d)"
        ) from exc


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def stores(directory: str | None, *, write: bool = True) -> list[Any]:
    """The stores at ``directory``: the store itself, or one per rank of a backend's directory.
    Never creates anything: a directory that is not a cache is an error naming the caches below
    it, if any (``write=False``: a read-only look, abandoned temporaries are left alone)."""
    from torchshim.cache import TAG, CacheStore, default_cache_dir

    root = (Path(directory).expanduser() if directory else default_cache_dir()).absolute()
    if not root.is_dir():
        raise CacheDirError(
            f"no cache directory at {root}"
            + ("; pass --cache-dir" if not directory else " (it does not exist or is a file)")
        )
    if (root / TAG).exists():
        roots = [root]
    else:  # a backend's cache_dir: one store per rank
        roots = sorted(p for p in root.glob("rank_*") if (p / TAG).is_file())
    if not roots:
        below = sorted(
            {p.parent for p in root.glob(f"*/{TAG}")} | {p.parent for p in root.glob(f"*/*/{TAG}")}
        )
        hint = ""
        if below:
            shown = ", ".join(str(p) for p in below[:4]) + (" ..." if len(below) > 4 else "")
            parents = sorted({p.parent for p in below if p.name.startswith("rank_")})
            hint = f"; caches below it: {shown}"
            if parents:
                hint += f" (pass --cache-dir {parents[0]} for all its ranks)"
        raise CacheDirError(
            f"{root} is not a torchshim cache (it holds no {TAG} and no rank_<n> caches)"
            f"{hint}. Nothing was changed."
        )
    return [CacheStore.open_existing(r, maintain=write) for r in roots]


def _remote(args: argparse.Namespace) -> Any:
    """The remote tier ``--remote`` (default ``$TORCHSHIM_REMOTE``) names, or ``None``."""
    from torchshim.cache.tiers import remote_from_environment

    return remote_from_environment(getattr(args, "remote", None))


def _remote_entries(remote: Any) -> list[Any]:
    """The remote tier's entries as the operator's tools see them (manifests unverified: for
    display; a load verifies)."""
    import json

    from torchshim.cache import EntryInfo

    found = []
    for entry_id, data in remote.entries():
        try:
            manifest = json.loads(data)
        except ValueError:
            manifest = None
        manifest = manifest if isinstance(manifest, dict) else None
        files = (manifest or {}).get("files", {})
        size = sum(int(r.get("size", 0)) for r in files.values() if isinstance(r, dict))
        created = float((manifest or {}).get("created", 0) or 0)
        found.append(EntryInfo(entry_id, Path(remote.name), size, created, manifest))
    return found


def _remote_info(remote: Any) -> None:
    from torchshim.errors import RemoteTierError

    try:
        entries = _remote_entries(remote)
        usage = remote.usage()
        counters = remote.stats()
    except RemoteTierError as exc:
        print(f"{remote.name}  (remote tier NOT reachable: {exc})")
        return
    limit = _human(usage["maxmemory"]) if usage["maxmemory"] else "no limit"
    print(f"{remote.name}  (remote tier)")
    print(f"  entries: {len(entries)}, {_human(sum(e.size for e in entries))}")
    print(f"  server memory: {_human(usage['used_bytes'])} of {limit}, policy {usage['policy']}")
    shown = ", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "none yet"
    print(f"  counters (every host): {shown}")


def cmd_cache_info(args: argparse.Namespace) -> int:
    remote = _remote(args)
    try:
        local = stores(args.cache_dir, write=False)
    except CacheDirError as exc:
        if remote is None:
            raise
        print(f"no local cache: {exc}")
        local = []
    if remote is not None:
        _remote_info(remote)
    for store in local:
        entries = store.entries()
        quarantined = (
            len(list((store.root / "quarantine").iterdir()))
            if (store.root / "quarantine").is_dir()
            else 0
        )
        state = "in use" if store.enabled else f"NOT used: {store.reason}"
        if store.enabled and not store.writable:
            state = "read-only"
        print(f"{store.root}  ({state})")
        print(f"  entries: {len(entries)}, {_human(sum(e.size for e in entries))}")
        print(f"  quarantined: {quarantined}")
        stats = store.stats()
        shown = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "none yet"
        print(f"  counters: {shown}")
        if args.verbose_entries:
            for entry in sorted(entries, key=lambda e: -e.last_used):
                meta = entry.meta
                shape = meta.get("runtime_shape")
                print(
                    f"    {entry.id}  {_human(entry.size):>10}  {meta.get('adaptor', '-'):<20} "
                    f"{'general' if shape is None else f'size {shape}'}"
                )
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from torchshim.cache.manifest import UNSIGNED

    bad_total = 0
    for store in stores(args.cache_dir):
        entries = store.entries()
        found = store.verify_all(args.quarantine_unsigned) if store.enabled else []
        unsigned = [(i, p) for i, p in found if p == UNSIGNED]
        bad = [(i, p) for i, p in found if p != UNSIGNED]
        bad_total += len(bad)
        state = "" if store.enabled else f" (NOT used: {store.reason})"
        print(
            f"{store.root}: {len(entries)} entries checked, {len(bad)} bad, "
            f"{len(unsigned)} unsigned{state}"
        )
        for entry_id, problem in bad:
            where = "quarantined" if store.writable else "left in place (read-only)"
            print(f"  {entry_id}: {problem} ({where})")
        for entry_id, _problem in unsigned:
            where = (
                "quarantined"
                if args.quarantine_unsigned and store.writable
                else "kept; --quarantine-unsigned moves it aside"
            )
            print(f"  {entry_id}: unsigned, a miss while TORCHSHIM_CACHE_KEY is set ({where})")
    return 1 if bad_total else 0


def _remote_prune(remote: Any, older_than: float | None) -> None:
    """Redis prunes itself (maxmemory + an LRU policy); ``--older-than`` also drops the index of
    every remote entry published earlier (its chunks go by eviction or TTL)."""
    import time

    usage = remote.usage()
    evicts = "lru" in usage["policy"] or "lfu" in usage["policy"]
    if not usage["maxmemory"] or not evicts:
        print(
            f"{remote.name}: maxmemory {usage['maxmemory'] or 'unset'}, policy "
            f"{usage['policy']}: Redis will not evict; set maxmemory and "
            "maxmemory-policy allkeys-lru (see docs/REMOTE.md)"
        )
    if older_than is None:
        return
    cutoff = time.time() - older_than
    old = [e.id for e in _remote_entries(remote) if e.last_used < cutoff]
    for entry_id in old:
        remote.drop(entry_id)
    print(f"{remote.name}: removed {len(old)} remote entr{'y' if len(old) == 1 else 'ies'}")


def cmd_cache_prune(args: argparse.Namespace) -> int:
    if args.max_size is None and args.older_than is None:
        print("torchshim: error: give --max-size and/or --older-than", file=sys.stderr)
        return 2
    remote = _remote(args)
    if remote is not None:
        _remote_prune(remote, args.older_than)
    try:
        local = stores(args.cache_dir)
    except CacheDirError as exc:
        if remote is None:
            raise
        print(f"no local cache: {exc}")
        local = []
    for store in local:
        removed = store.prune(max_size=args.max_size, older_than=args.older_than)
        left = store.entries()
        print(
            f"{store.root}: removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}; "
            f"{len(left)} left, {_human(sum(e.size for e in left))}"
        )
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    for store in stores(args.cache_dir):
        count = store.clear()
        print(f"{store.root}: removed {count} entries")
    return 0


def cmd_cache_explain(args: argparse.Namespace) -> int:
    from torchshim.explain import explain

    remote = _remote(args)
    extra = _remote_entries(remote) if remote is not None else []
    lines, differ = explain(
        stores(args.cache_dir, write=False), args.entry_a, args.entry_b, extra=extra
    )
    for line in lines:
        print(line)
    return 1 if differ else 0


def cmd_cache_export(args: argparse.Namespace) -> int:
    from torchshim.cache.bundle import export_bundle

    chosen = stores(args.cache_dir, write=False)
    count = export_bundle(chosen, Path(args.out))
    print(f"{args.out}: {count} entr{'y' if count == 1 else 'ies'} from {len(chosen)} store(s)")
    return 0


def cmd_cache_import(args: argparse.Namespace) -> int:
    from torchshim.cache import default_cache_dir
    from torchshim.cache.bundle import import_bundle

    target = (
        Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    ).absolute()
    done = import_bundle(Path(args.bundle), target)
    new = sum(1 for _, fresh in done if fresh)
    print(f"{target}: {new} entries imported, {len(done) - new} already there (all verified)")
    return 0


def cmd_cache_check(args: argparse.Namespace) -> int:
    """For each entry of a bundle or a cache directory: will it hit here, or which factor
    differs. Exit 1 when any entry misses."""
    import json

    from torchshim.explain import check

    source = Path(args.source)
    if source.is_dir():
        entries = [e for store in stores(str(source), write=False) for e in store.entries()]
    else:
        from torchshim.cache.bundle import bundle_entries

        entries = list(bundle_entries(source))
    rows = check(entries)
    if args.json:
        print(json.dumps({"source": str(source), "entries": rows}, indent=1))
    else:
        print(f"{'entry':<14} {'adaptor':<20} {'shape':<9} verdict")
        for row in rows:
            print(f"{row['id'][:12]:<14} {row['adaptor']:<20} {row['shape']:<9} {row['verdict']}")
        hits = sum(1 for r in rows if r["verdict"] == "hit")
        print(f"{hits} of {len(rows)} entries will hit here")
    return 0 if all(r["verdict"] == "hit" for r in rows) else 1
