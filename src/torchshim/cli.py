"""The ``torchshim`` command line: ``doctor``, ``matrix render``, ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from torchshim.errors import TorchShimError

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
