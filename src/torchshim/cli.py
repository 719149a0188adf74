"""The ``torchshim`` command line: ``doctor``, ``matrix render``, ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchshim.errors import CacheDirError, TorchShimError

__all__ = ["main"]


def _cmd_doctor(args: argparse.Namespace) -> int:
    from torchshim.doctor import dumps, hook_report

    if not args.json:
        print("checking torch's private hooks (importing torch) ...", file=sys.stderr, flush=True)
    report = hook_report()
    if args.json:
        print(dumps(report))
        return 0 if report.ok else 1
    support = "supported" if report.supported else "NOT supported"
    print(f"torch {report.torch_version}: series {report.series} ({support}), shim {report.shim}")
    if not report.supported:
        print(f"  expectations taken from series {report.checked_against}")
    print(f"capabilities: {', '.join(report.capabilities) or '-'}")
    print()
    width = max(len(h.name) for h in report.hooks)
    print(f"{'status':<18} {'hook':<{width}}  adaptors                       detail")
    for h in report.hooks:
        status = h.status.value
        adaptors = ", ".join(h.adaptors) or "-"
        print(f"{status:<18} {h.name:<{width}}  {adaptors:<30} {h.detail}")
    print()
    if report.ok:
        print("all hooks the adaptors need are ok")
        return 0
    print(
        "BROKEN for adaptor(s): " + ", ".join(report.broken_adaptors) + ". "
        "Do not upgrade to this torch until torchshim has a shim that covers these hooks."
    )
    return 1


def _cmd_matrix_render(args: argparse.Namespace) -> int:
    from torchshim.matrix import load_results, render

    results = load_results(Path(args.results))
    if not results:
        print(f"no results under {args.results}; run the tox series envs first", file=sys.stderr)
        return 2
    text = render(results)
    out = Path(args.out)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(
            f"torchshim: error: cannot write {out}: {exc.strerror or exc}. Pass --out a file in "
            "an existing, writable directory.",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {out} from {len(results)} env result(s)")
    return 0


def _parse_size(text: str) -> int:
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


def _parse_age(text: str) -> float:
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


def _stores(directory: str | None) -> list[Any]:
    from torchshim.cache import CacheStore, default_cache_dir

    root = Path(directory).expanduser() if directory else default_cache_dir()
    if not root.is_dir():
        raise CacheDirError(f"no cache directory at {root}; pass --cache-dir")
    if (root / "entries").is_dir():
        roots = [root]
    else:  # a backend's cache_dir: one store per rank
        roots = sorted(p for p in root.glob("rank_*") if p.is_dir()) or [root]
    return [CacheStore(r, create=False) for r in roots]


def _cmd_cache_info(args: argparse.Namespace) -> int:
    for store in _stores(args.cache_dir):
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


def _cmd_cache_verify(args: argparse.Namespace) -> int:
    bad_total = 0
    for store in _stores(args.cache_dir):
        entries = store.entries()
        bad = store.verify_all() if store.enabled else []
        bad_total += len(bad)
        print(f"{store.root}: {len(entries)} entries checked, {len(bad)} bad")
        for entry_id, problem in bad:
            where = "quarantined" if store.writable else "left in place (read-only)"
            print(f"  {entry_id}: {problem} ({where})")
    return 1 if bad_total else 0


def _cmd_cache_prune(args: argparse.Namespace) -> int:
    if args.max_size is None and args.older_than is None:
        print("torchshim: error: give --max-size and/or --older-than", file=sys.stderr)
        return 2
    for store in _stores(args.cache_dir):
        removed = store.prune(max_size=args.max_size, older_than=args.older_than)
        left = store.entries()
        print(
            f"{store.root}: removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}; "
            f"{len(left)} left, {_human(sum(e.size for e in left))}"
        )
    return 0


def _cmd_cache_clear(args: argparse.Namespace) -> int:
    for store in _stores(args.cache_dir):
        count = store.clear()
        print(f"{store.root}: removed {count} entries")
    return 0


def _cmd_cache_explain(args: argparse.Namespace) -> int:
    from torchshim.explain import explain

    lines, differ = explain(_stores(args.cache_dir), args.entry_a, args.entry_b)
    for line in lines:
        print(line)
    return 1 if differ else 0


def _cell(value: Any) -> str:
    return f"{value:12.3g}" if isinstance(value, float) else f"{value:12}"


def _cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from torchshim.demo import run_demo

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(
            f"torchshim: error: --sizes takes batch sizes like 1,2,4,8, not {args.sizes!r}",
            file=sys.stderr,
        )
        return 2
    if not sizes or any(s < 1 for s in sizes):
        print("torchshim: error: --sizes needs at least one batch size >= 1", file=sys.stderr)
        return 2
    base = (
        Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="torchshim-demo-"))
    )
    cache = base / f"demo-{args.adaptor}-{args.device}"
    start = time.time()

    def progress(line: str) -> None:
        # torchshim's own progress lines; Inductor's autotuning chatter only with -v
        if line.strip() and (args.verbose or "torchshim" in line or line.startswith("[")):
            print(f"[{time.time() - start:6.1f} s] {line.strip()}", flush=True)

    print(
        f"torchshim demo: a small transformer, {args.device}, adaptor {args.adaptor}, "
        f"served batch sizes {sizes}; cache {cache}",
        flush=True,
    )
    result = run_demo(cache, sizes, args.adaptor, args.device, progress)
    cold, warm = result.cold, result.warm
    rows = [
        (
            "process start to all graphs ready, s",
            cold["start_to_ready_s"],
            warm["start_to_ready_s"],
        ),
        ("  of which importing torch, s", cold["import_s"], warm["import_s"]),
        ("  of which compiling/loading graphs, s", cold["backend_s"], warm["backend_s"]),
        ("graphs compiled", cold["stats"]["compiled"], warm["stats"]["compiled"]),
        ("graphs loaded", cold["stats"]["loaded"], warm["stats"]["loaded"]),
        ("kernel builds (C++/Triton)", cold["builds"], warm["builds"]),
        ("FX-graph-cache misses", cold["fx_misses"], warm["fx_misses"]),
        ("max |error| vs eager", max(cold["max_err"].values()), max(warm["max_err"].values())),
    ]
    print()
    print(f"{'':42} {'cold':>12} {'warm':>12}")
    for name, a, b in rows:
        print(f"{name:42} {_cell(a)} {_cell(b)}")
    speedup = cold["start_to_ready_s"] / max(warm["start_to_ready_s"], 1e-9)
    print(f"{'warm start speed-up over cold':42} {speedup:11.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"cold": cold, "warm": warm}, indent=1))
    if not result.ok:
        for problem in result.problems:
            print(f"FAILED: {problem}", file=sys.stderr)
        return 1
    print("ok: the warm start compiled nothing and both starts match eager")
    return 0


def _demo_worker(argv: Sequence[str]) -> int:
    """``torchshim _demo-worker ...``: one start of the demo, run by ``torchshim demo``."""
    from torchshim.demo import worker_main

    print(json.dumps(worker_main(argv)), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchshim",
        description="Stable facade over PyTorch's private compile-cache hooks (torch 2.5 - 2.15).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser(
        "doctor", help="check which private hooks the installed torch breaks (exit 1 if any)"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_cmd_doctor)

    matrix = sub.add_parser("matrix", help="matrix results")
    matrix_sub = matrix.add_subparsers(dest="matrix_command", required=True)
    render = matrix_sub.add_parser("render", help="render matrix/MATRIX.md from env results")
    render.add_argument("--results", default="matrix/results", help="folder of <env>.json files")
    render.add_argument("--out", default="matrix/MATRIX.md", help="markdown file to write")
    render.set_defaults(func=_cmd_matrix_render)

    demo = sub.add_parser(
        "demo",
        help="cold then warm start of a small transformer through torchshim's backend, each in "
        "a fresh process; exits 1 if outputs differ or the warm start compiled anything",
    )
    demo.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    demo.add_argument("--sizes", default="1,2,4,8", help="served batch sizes (default 1,2,4,8)")
    demo.add_argument(
        "--adaptor", choices=["auto", "inductor", "inductor_standalone", "eager"], default="auto"
    )
    demo.add_argument("--cache-dir", default=None, help="where to keep the cache (default: temp)")
    demo.add_argument("--json", default=None, help="also write both records to this file")
    demo.set_defaults(func=_cmd_demo)

    cache = sub.add_parser("cache", help="inspect, verify, prune, clear and explain a cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)

    def cache_command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        command = cache_sub.add_parser(name, help=help_text)
        command.add_argument(
            "--cache-dir",
            default=None,
            help="the cache (default: $TORCHSHIM_CACHE_DIR or the "
            "user's cache directory); a backend's directory covers all its ranks",
        )
        command.set_defaults(func=func)
        return command

    info = cache_command("info", "entries, sizes, hit/miss counters", _cmd_cache_info)
    info.add_argument(
        "--entries", dest="verbose_entries", action="store_true", help="list every entry"
    )
    cache_command(
        "verify",
        "check every entry's files against its manifest; quarantine bad ones (exit 1 if any)",
        _cmd_cache_verify,
    )
    prune = cache_command("prune", "evict least-recently-used entries", _cmd_cache_prune)
    prune.add_argument("--max-size", type=_parse_size, default=None, help="e.g. 500M, 10G")
    prune.add_argument("--older-than", type=_parse_age, default=None, help="e.g. 12h, 7d")
    cache_command("clear", "remove every entry", _cmd_cache_clear)
    explain = cache_command(
        "explain",
        "which key factor differs between two entries, or an entry and this process",
        _cmd_cache_explain,
    )
    explain.add_argument("entry_a", help="an entry id (or a unique prefix of one)")
    explain.add_argument(
        "entry_b",
        nargs="?",
        default=None,
        help="another entry; omitted: this process's torch and config",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_demo-worker"]:
        return _demo_worker(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except TorchShimError as exc:
        print(f"torchshim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `torchshim doctor --json | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
