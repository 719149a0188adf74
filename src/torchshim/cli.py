"""The ``torchshim`` command line: ``doctor``, ``matrix render``, ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchshim.cli_cache import (
    cmd_cache_check,
    cmd_cache_clear,
    cmd_cache_explain,
    cmd_cache_export,
    cmd_cache_import,
    cmd_cache_info,
    cmd_cache_prune,
    cmd_cache_verify,
    parse_age,
    parse_size,
)
from torchshim.config import ADAPTOR_NAMES
from torchshim.errors import DemoError, TorchShimError
from torchshim.shims import SUPPORTED_SERIES

if TYPE_CHECKING:
    from torchshim.demo import DemoCache

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
    from torchshim.matrix import (
        data_document,
        load_results,
        merge_results,
        read_data,
        render,
        write_result,
    )
    from torchshim.shims import SUPPORTED_SERIES

    def error(message: str) -> int:
        print(f"torchshim: error: {message}", file=sys.stderr)
        return 2

    try:
        new = load_results(Path(args.results))
    except ValueError as exc:
        return error(f"cannot read the env results: {exc}")
    if not new:
        print(f"no results under {args.results}; run the tox series envs first", file=sys.stderr)
        return 2
    out = Path(args.out)
    data = Path(args.data) if args.data else out.with_name("matrix.json")
    for target, option in ((out, "--out"), (data, "--data")):
        if not target.parent.is_dir():
            return error(
                f"cannot write {target}: {target.parent} is not an existing directory. Pass "
                f"{option} a file in an existing, writable directory."
            )
    kept: list[str] = []
    results = new
    if not args.replace:
        have = {str(r["series"]) for r in new}
        missing = [str(s) for s in SUPPORTED_SERIES if str(s) not in have]
        try:
            previous = read_data(data)
        except FileNotFoundError:
            previous = None
            why = f"there is no {data}"
        except ValueError as exc:
            previous = None
            why = str(exc)
        if previous is not None:
            results, kept = merge_results(previous, new)
        elif missing:
            return error(
                f"{why}, so the rows of the series without a new result "
                f"({', '.join(missing)}) cannot be kept and would be dropped from {out}. Pass "
                "--replace to render only the new results (and start a new "
                f"{data.name}), or render the results of every series."
            )
    try:
        out.write_text(render(results, kept), encoding="utf-8")
    except OSError as exc:
        return error(
            f"cannot write {out}: {exc.strerror or exc}. Pass --out a file in an existing, "
            "writable directory."
        )
    try:
        write_result(data, data_document(results, kept))
    except OSError as exc:
        return error(
            f"wrote {out} but cannot write {data}: {exc.strerror or exc}; the next render "
            "cannot keep rows without a new result. Pass --data a writable file."
        )
    kept_text = ""
    if kept:
        dated = {str(r["env"]): r.get("date", "?") for r in results}
        kept_text = "; kept without a new result: " + ", ".join(
            f"{env} ({dated[env]})" for env in kept
        )
    print(f"wrote {out} and {data} from {len(new)} new env result(s){kept_text}")
    return 0


def _cmd_precompile(args: argparse.Namespace) -> int:
    from torchshim.aot_build import load_target, precompile
    from torchshim.config import parse_compile_sizes

    sizes = parse_compile_sizes(args.sizes, "--sizes")
    options = {"compile_sizes": sizes, "adaptor": args.adaptor}
    if args.cache_dir:
        options["cache_dir"] = args.cache_dir
    from torchshim.options import BackendOptions

    chosen = BackendOptions(**options)  # a bad setting fails here, before the model is built
    print(f"torchshim precompile: {args.target} on {args.device}, sizes {list(sizes)}", flush=True)
    if args.device == "cuda":
        from torchshim.demo import check_device

        check_device("cuda")
    started = time.time()
    model, call_args, call_kwargs = load_target(args.target, args.device)
    stats = precompile(model, call_args, chosen, example_kwargs=call_kwargs)
    where = chosen.cache_dir or "the default cache directory"
    print(
        f"{stats['compiled']} graph(s) compiled, {stats['loaded']} already in the cache, into "
        f"{where} in {time.time() - started:.1f} s"
    )
    return 0


def _phases(cold: dict[str, Any], warm: dict[str, Any], name: str) -> tuple[Any, Any]:
    return _phase(cold, name), _phase(warm, name)


def _phase(record: dict[str, Any], name: str) -> float:
    phases = record.get("stats", {}).get("phases", {})
    return float(phases.get(name, 0.0))


def _cell(value: Any) -> str:
    return f"{value:12.3g}" if isinstance(value, float) else f"{value:12}"


def _cmd_demo(args: argparse.Namespace) -> int:
    from torchshim.demo import (
        check_adaptor,
        check_device,
        check_output_file,
        prepare_cache,
        release_cache,
    )

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
    # everything a worker would trip over, checked before one starts, each a DemoError (one line
    # from main); main has checked the TORCHSHIM_* variables already
    check_device(args.device)
    check_adaptor(args.adaptor)
    json_out = Path(args.json).expanduser().absolute() if args.json else None
    if json_out is not None:
        check_output_file(json_out)
    cache = prepare_cache(
        Path(args.cache_dir) if args.cache_dir else None,
        args.adaptor,
        args.device,
        fresh=args.fresh,
    )
    completed = False
    try:
        code = _run_demo_and_report(args, sizes, cache, json_out)
        completed = True
    finally:
        release_cache(cache, completed=completed)
    return code


def _run_demo_and_report(
    args: argparse.Namespace, sizes: list[int], cache: DemoCache, json_out: Path | None
) -> int:
    from torchshim.demo import run_demo

    start = time.time()
    eager = args.adaptor == "eager"

    def progress(line: str) -> None:
        # torchshim's own progress lines; Inductor's autotuning chatter only with -v
        if line.strip() and (args.verbose or "torchshim" in line or line.startswith("[")):
            print(f"[{time.time() - start:6.1f} s] {line.strip()}", flush=True)

    kept = (
        "a temporary directory, removed at exit; pass --cache-dir DIR to keep it"
        if cache.temporary is not None
        else "--cache-dir: kept"
    )
    print(
        f"torchshim demo: a small transformer, {args.device}, adaptor {args.adaptor}, "
        f"served batch sizes {sizes}; cache {cache.path} ({kept})",
        flush=True,
    )
    first_warm = cache.earlier_run
    if cache.cleared:
        print(
            f"--fresh: removed this demo's earlier cache at {cache.path}; the first start is cold"
        )
    elif first_warm and eager:
        print(
            f"the cache at {cache.path} is left from an earlier run of this demo; eager stores "
            "no entries, so every start is warm (traced again, nothing compiled or loaded); "
            "pass --fresh to clear it",
            flush=True,
        )
    elif first_warm:
        print(
            f"the cache at {cache.path} already holds this demo's entries: the first start is "
            "warm too; pass --fresh to start cold",
            flush=True,
        )
    result = run_demo(
        cache.path,
        sizes,
        args.adaptor,
        args.device,
        progress,
        first_warm=first_warm,
        traceback=args.verbose,
    )
    cold, warm = result.cold, result.warm
    rows = [
        (
            "process start to all graphs ready, s",
            cold["start_to_ready_s"],
            warm["start_to_ready_s"],
        ),
        ("  of which importing torch, s", cold["import_s"], warm["import_s"]),
        # torch 2.10+: a warm start runs the saved trace; the rest of its first call is graph
        # rebuilding and the first runs, not tracing
        ("  of which Dynamo (trace; warm: first runs), s", *_phases(cold, warm, "dynamo_s")),
        ("  of which loading the saved trace, s", *_phases(cold, warm, "program_s")),
        ("  of which compiling/loading graphs, s", cold["backend_s"], warm["backend_s"]),
        ("    of which verifying entries, s", *_phases(cold, warm, "verify_s")),
        ("graphs compiled", cold["stats"]["compiled"], warm["stats"]["compiled"]),
        ("graphs loaded", cold["stats"]["loaded"], warm["stats"]["loaded"]),
        ("kernel builds (C++/Triton)", cold["builds"], warm["builds"]),
        ("FX-graph-cache misses", cold["fx_misses"], warm["fx_misses"]),
        ("max |error| vs eager", max(cold["max_err"].values()), max(warm["max_err"].values())),
    ]
    if eager:
        rows.insert(
            7,
            (
                "graphs run uncompiled (eager)",
                cold["stats"].get("eager", 0),
                warm["stats"].get("eager", 0),
            ),
        )
    if args.device == "cuda":
        capture = [r["stats"].get("serving", {}) for r in (cold, warm)]
        rows.insert(
            5,
            (
                "  of which capturing CUDA graphs, s",
                capture[0].get("capture_seconds", 0.0),
                capture[1].get("capture_seconds", 0.0),
            ),
        )
    first, second = ("first", "second") if first_warm else ("cold", "warm")
    width = max(42, *(len(row[0]) for row in rows))  # every label fits its column
    print()
    print(f"{'':{width}} {first:>12} {second:>12}")
    for name, a, b in rows:
        print(f"{name:{width}} {_cell(a)} {_cell(b)}")
    if eager:
        print(
            "eager compiles and stores nothing: a warm start traces again with Dynamo and runs "
            "the graphs uncompiled (0 compiled, 0 kernel builds, 0 FX-graph-cache misses); "
            "there is nothing to load"
        )
    elif first_warm:
        print("both starts were warm (the cache held this demo's entries): no speed-up to show")
    else:
        speedup = cold["start_to_ready_s"] / max(warm["start_to_ready_s"], 1e-9)
        print(f"{'warm start speed-up over cold':{width}} {speedup:11.1f}x")
    if json_out is not None:
        try:
            json_out.write_text(json.dumps({"cold": cold, "warm": warm}, indent=1))
        except OSError as exc:
            raise DemoError(f"cannot write --json {json_out}: {exc.strerror or exc}") from exc
    if not result.ok:
        for problem in result.problems:
            print(f"FAILED: {problem}", file=sys.stderr)
        return 1
    if eager:
        print(
            "ok: the warm start compiled nothing (eager: nothing to load) and both starts match eager"
        )
    else:
        print("ok: the warm start compiled nothing and both starts match eager")
    return 0


def _demo_worker(argv: Sequence[str]) -> int:
    """``torchshim _demo-worker ...``: one start of the demo, run by ``torchshim demo``. A
    failure is one JSON error record on stdout (its type and message) and exit status 1, so the
    parent can name the cause; the traceback goes to stderr with ``--traceback``."""
    from torchshim.demo import error_record, worker_main

    try:
        record = worker_main(argv)
    except Exception as exc:
        if "--traceback" in argv:
            traceback.print_exc()
        print(json.dumps(error_record(exc)), flush=True)
        return 1
    print(json.dumps(record), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchshim",
        description="Stable facade over PyTorch's private compile-cache hooks (torch "
        f"{SUPPORTED_SERIES[0]} - {SUPPORTED_SERIES[-1]}).",
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
    render.add_argument(
        "--data",
        default=None,
        help="the rendered results with their dates, read to keep the rows of envs without a "
        "new result and rewritten (default: matrix.json next to --out)",
    )
    render.add_argument(
        "--replace",
        action="store_true",
        help="render only the new results, dropping the rows of envs without one",
    )
    render.set_defaults(func=_cmd_matrix_render)

    demo = sub.add_parser(
        "demo",
        help="cold then warm start of a small transformer through torchshim's backend, each in "
        "a fresh process; exits 1 if outputs differ or the warm start compiled anything",
    )
    demo.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    demo.add_argument("--sizes", default="1,2,4,8", help="served batch sizes (default 1,2,4,8)")
    demo.add_argument("--adaptor", choices=list(ADAPTOR_NAMES), default="auto")
    demo.add_argument(
        "--cache-dir",
        default=None,
        help="keep the cache in DIR/demo-<adaptor>-<device> (created if missing; a re-run "
        "starts warm from it); default: a temporary directory, removed at exit",
    )
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="clear this demo's sub-directory of --cache-dir first, so the first start is cold",
    )
    demo.add_argument("--json", default=None, help="also write both records to this file")
    demo.set_defaults(func=_cmd_demo)

    build = sub.add_parser(
        "precompile",
        help="compile a model's graphs for its served sizes into a cache ahead of time",
    )
    build.add_argument(
        "target",
        help="module:function returning (model, example_args[, example_kwargs]), e.g. "
        "torchshim.demo:example",
    )
    build.add_argument("--cache-dir", default=None, help="the cache (default: as the backend's)")
    build.add_argument("--sizes", default="", help="served sizes and ranges, e.g. 1,2,4,8,9-64")
    build.add_argument("--adaptor", choices=list(ADAPTOR_NAMES), default="auto")
    build.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    build.set_defaults(func=_cmd_precompile)

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

    def remote_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--remote",
            default=None,
            help="also the remote tier, redis://host:port/db (default: $TORCHSHIM_REMOTE)",
        )

    info = cache_command("info", "entries, sizes, hit/miss counters", cmd_cache_info)
    remote_option(info)
    info.add_argument(
        "--entries", dest="verbose_entries", action="store_true", help="list every entry"
    )
    verify = cache_command(
        "verify",
        "check every entry's files against its manifest; quarantine bad ones (exit 1 if any)",
        cmd_cache_verify,
    )
    verify.add_argument(
        "--quarantine-unsigned",
        action="store_true",
        help="with TORCHSHIM_CACHE_KEY set, also move intact unsigned entries aside",
    )
    prune = cache_command("prune", "evict least-recently-used entries", cmd_cache_prune)
    prune.add_argument("--max-size", type=parse_size, default=None, help="e.g. 500M, 10G")
    prune.add_argument("--older-than", type=parse_age, default=None, help="e.g. 12h, 7d")
    remote_option(prune)
    cache_command("clear", "remove every entry", cmd_cache_clear)
    explain = cache_command(
        "explain",
        "which key factor differs between two entries, or an entry and this process",
        cmd_cache_explain,
    )
    explain.add_argument("entry_a", help="an entry id (or a unique prefix of one)")
    explain.add_argument(
        "entry_b",
        nargs="?",
        default=None,
        help="another entry; omitted: this process's torch and config",
    )
    remote_option(explain)
    export = cache_command(
        "export", "write every verified entry into one bundle file", cmd_cache_export
    )
    export.add_argument("--out", required=True, help="the bundle file to write")
    imported = cache_command(
        "import", "verify a bundle whole, then publish its entries here", cmd_cache_import
    )
    imported.add_argument("bundle", help="a file written by `torchshim cache export`")
    check = cache_sub.add_parser(
        "check", help="will each entry of a bundle or cache hit here, or which factor differs"
    )
    check.add_argument("source", help="a bundle file or a cache directory")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_cache_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_demo-worker"]:
        try:
            return _demo_worker(argv[1:])
        except KeyboardInterrupt:  # the demo's parent kills its worker; say nothing
            return 130
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        from torchshim.config import check_environment

        check_environment()  # a bad TORCHSHIM_* variable: one line, before any work
        code: int = args.func(args)
    except KeyboardInterrupt:
        # Ctrl-C: commands clean up on the way out (the demo kills its worker, removes its
        # temporary cache); one line, no traceback
        print("torchshim: interrupted", file=sys.stderr)
        return 130
    except TorchShimError as exc:
        print(f"torchshim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `torchshim doctor --json | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
