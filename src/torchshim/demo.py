"""``torchshim demo``: a cold start and a warm start of a small transformer, each in a fresh
process, through torchshim's backend; what each phase cost, what was compiled and loaded, and
whether the outputs match eager.

The worker (``python -m torchshim _demo-worker ...``) prints progress on stderr and one JSON line
on stdout: its record, or, when it fails, an error record (``{"error": {"type", "message"}}``) and
exit status 1. :func:`run_demo` starts it twice and returns both records; a worker that fails or is
interrupted is killed with everything it started, and the failure is one :class:`DemoError`
carrying the worker's exception.

Everything the parent can check is checked before a worker starts (:func:`check_device`,
:func:`check_output_file`, :func:`prepare_cache`), so a bad option is one line, not a traceback
out of a worker. The demo's cache is the sub-directory ``demo-<adaptor>-<device>`` of
``--cache-dir`` (kept, and found again by a re-run) or of a temporary directory (removed at exit,
see :func:`release_cache`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchshim.errors import DemoError

__all__ = [
    "DemoCache",
    "DemoResult",
    "build_model",
    "check_device",
    "check_output_file",
    "error_record",
    "prepare_cache",
    "release_cache",
    "run_demo",
    "worker_main",
]

VOCAB = 512
SEQ = 16
TOLERANCE = {"cpu": 1e-4, "cuda": 2e-2}
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "clang++", "nvcc", "ptxas")


def build_model(device: str = "cpu", dim: int = 128, heads: int = 4, layers: int = 2) -> Any:
    """The built-in model (:class:`torchshim.demo_model.DemoModel`): a small decoder block stack
    (embedding, attention with a Python-float scale, layer norm, GELU MLP, tensor-method
    reshapes), random weights."""
    import torch

    from torchshim.demo_model import DemoModel

    torch.manual_seed(0)
    return DemoModel(dim, heads, layers).to(device).eval()


def tokens(batch: int, device: str) -> Any:
    import torch

    gen = torch.Generator().manual_seed(1000 + batch)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen).to(device)


def example() -> tuple[Any, tuple[Any, ...]]:
    """The demo model and one call's inputs, for ``torchshim precompile torchshim.demo:example``
    (a serving process calls ``torchshim.compile(build_model(...), ...)`` with the same
    settings)."""
    return build_model("cpu"), (tokens(3, "cpu"),)


@contextlib.contextmanager
def _count_builds() -> Iterator[list[str]]:
    """Compiler processes that write an output file (C++ kernel builds, Triton's ptxas)."""
    from torchshim._patching import patch_attr

    builds: list[str] = []
    original = subprocess.Popen.__init__

    def init(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [str(a) for a in (args if isinstance(args, (list, tuple)) else str(args).split())]
        if argv and os.path.basename(argv[0]) in COMPILERS and "-o" in argv and "-E" not in argv:
            builds.append(" ".join(argv)[:200])
        original(self, args, *rest, **kwargs)

    with patch_attr(subprocess.Popen, "__init__", init):
        yield builds


def worker_main(argv: Sequence[str]) -> dict[str, Any]:
    """One start of the demo model (cold or warm); its record (``torchshim _demo-worker`` prints
    it as one JSON line)."""
    parser = argparse.ArgumentParser(prog="torchshim _demo-worker")
    parser.add_argument("--phase", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--adaptor", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spawned-at", type=float, default=None)
    # the CLI (``_demo_worker``) prints the traceback of a failure on stderr; the parent asks
    # for it under ``torchshim -v demo``
    parser.add_argument("--traceback", action="store_true")
    args = parser.parse_args(argv)
    spawned = args.spawned_at or time.time()
    import logging

    logging.basicConfig(level=logging.WARNING, format="  %(message)s", stream=sys.stderr)
    logging.getLogger("torchshim.compile_backend").setLevel(logging.INFO)

    t0 = time.time()
    import torch

    import torchshim
    from torchshim._version import installed_torch_version
    from torchshim.compile_backend import Backend

    imported = time.time()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    model = build_model(args.device)
    compiled: Any = torchshim.compile(
        model, cache_dir=args.cache_dir, compile_sizes=sizes, adaptor=args.adaptor
    )
    backend: Backend = compiled.backend
    shim = torchshim.shims.active().module
    before = shim.compile_counters()
    # trace with a batch Dynamo keeps symbolic (it specialises 0 and 1)
    probe = tokens(max([2, *sizes]), args.device)
    with _count_builds() as builds, torch.no_grad():
        first = compiled(probe)
        if args.device == "cuda":
            torch.cuda.synchronize()
        ready = time.time()
        errors = {}
        for batch in [*sizes, max(sizes, default=2) + 1]:
            x = tokens(batch, args.device)
            errors[str(batch)] = float((compiled(x) - model(x)).abs().max())
    after = shim.compile_counters()
    counters = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    record = {
        "phase": args.phase,
        "device": args.device,
        "adaptor": args.adaptor,
        "torch": installed_torch_version(),
        "sizes": sizes,
        "import_s": round(imported - t0, 3),
        "start_to_ready_s": round(ready - spawned, 3),
        "backend_s": round(backend.stats.seconds, 3),
        "first_result_shape": list(first.shape),
        "max_err": errors,
        "stats": backend.stats.as_dict(),
        "builds": len(builds),
        "fx_misses": counters.get("inductor.fxgraph_cache_miss", 0),
        "events": backend.stats.events,
    }
    return record


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_record(exc: BaseException) -> dict[str, Any]:
    """What a failed worker prints instead of its record: the exception's type and message, on
    one line, for the parent's one-line error."""
    return {"error": {"type": type(exc).__name__, "message": _one_line(str(exc))}}


@dataclass
class DemoResult:
    cold: dict[str, Any]
    warm: dict[str, Any]
    ok: bool
    problems: list[str]


# -- what the parent checks before a worker starts ------------------------------------------------
def check_device(device: str) -> None:
    """``--device cuda`` needs a GPU torch can use (torch is imported only for cuda)."""
    if device != "cuda":
        return
    import torch

    from torchshim._version import cuda_build, installed_torch_version

    if not torch.cuda.is_available():
        build = " (a CPU-only build)" if cuda_build() is None else ""
        raise DemoError(
            f"--device cuda: torch {installed_torch_version()}{build} sees no CUDA device "
            "(torch.cuda.is_available() is False); run with --device cpu, or on a machine with "
            "an NVIDIA GPU and a CUDA build of torch"
        )


def check_adaptor(adaptor: str) -> None:
    """``--adaptor inductor_standalone`` needs a torch that has ``standalone_compile`` (torch is
    imported only for that adaptor; ``auto`` falls back to ``inductor`` by itself)."""
    if adaptor != "inductor_standalone":
        return
    from torchshim.shims import require_capability

    require_capability("supports_standalone_compile", "Run the demo with --adaptor inductor.")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist; raise unless it can be created (nothing is created)."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise DemoError(
            f"{what} {path} cannot be created: {ancestor} is not a directory; pass a path under "
            "an existing directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DemoError(
            f"{what} {path} cannot be created: {ancestor} is not writable; pass a directory "
            "you can write"
        )


def check_output_file(path: Path) -> None:
    """``--json FILE`` must be writable at the end of the run; say so now, not after it."""
    if path.is_dir():
        raise DemoError(f"--json {path} is a directory; pass a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise DemoError(f"--json {path} is not writable; pass another file")
        return
    if not path.parent.is_dir():
        raise DemoError(
            f"--json {path}: {path.parent} is not an existing directory; create it first"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DemoError(f"--json {path}: {path.parent} is not writable; pass another file")


@dataclass(frozen=True)
class DemoCache:
    """Where the demo keeps its cache, and what this run created there."""

    path: Path  # the demo's own sub-directory, demo-<adaptor>-<device>
    temporary: Path | None  # the temporary directory holding ``path``, removed at exit
    created: Path | None  # the top-most directory this run created (removed if the run fails)
    earlier_run: bool  # ``path`` held an earlier run's cache when this run started
    cleared: bool  # ``--fresh`` removed an earlier run's cache


def prepare_cache(
    cache_dir: Path | None, adaptor: str, device: str, *, fresh: bool = False
) -> DemoCache:
    """Check ``--cache-dir`` (raising :class:`DemoError` with nothing created), then create the
    demo's sub-directory ``demo-<adaptor>-<device>``: under ``cache_dir``, kept and reused by a
    later run (``fresh`` clears only that sub-directory first), or under a new temporary
    directory."""
    name = f"demo-{adaptor}-{device}"
    if cache_dir is None:
        try:
            temporary = Path(tempfile.mkdtemp(prefix="torchshim-demo-"))
        except OSError as exc:
            raise DemoError(
                f"cannot create a temporary directory for the demo's cache in "
                f"{tempfile.gettempdir()}: {exc.strerror or exc}; pass --cache-dir DIR"
            ) from exc
        path = temporary / name
        path.mkdir(mode=0o700)
        return DemoCache(path, temporary, temporary, earlier_run=False, cleared=False)
    base = cache_dir.expanduser().absolute()
    path = base / name
    if base.exists() and not base.is_dir():
        raise DemoError(
            f"--cache-dir {base} is not a directory; pass a directory (created if missing)"
        )
    if not base.exists():
        _check_creatable(base, "--cache-dir")
    elif path.is_symlink() or (path.exists() and not path.is_dir()):
        raise DemoError(
            f"{path} (the demo's cache under --cache-dir) is not a directory; remove it or pass "
            "another --cache-dir"
        )
    elif not os.access(base, os.W_OK | os.X_OK) and (fresh or not path.exists()):
        raise DemoError(f"--cache-dir {base} is not writable; pass a directory you can write")
    try:
        earlier = path.is_dir() and any(path.iterdir())
        if fresh and path.exists():
            shutil.rmtree(path)
        created = None if base.exists() else _nearest_missing(base)
        if not path.exists():
            created = created or path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DemoError(
            f"cannot prepare the demo's cache {path}: {exc.strerror or exc}; pass another "
            "--cache-dir"
        ) from exc
    return DemoCache(
        path, None, created, earlier_run=earlier and not fresh, cleared=earlier and fresh
    )


def _nearest_missing(path: Path) -> Path:
    """The top-most directory that creating ``path`` creates."""
    while not path.parent.exists():
        path = path.parent
    return path


def release_cache(cache: DemoCache, *, completed: bool) -> None:
    """Remove the temporary directory (always), or what this run created under ``--cache-dir``
    when it did not complete (failed or interrupted): a run leaves behind only the cache it said
    it would keep."""
    doomed = cache.temporary or (None if completed else cache.created)
    if doomed is not None:
        shutil.rmtree(doomed, ignore_errors=True)


def _kill(proc: subprocess.Popen[str]) -> None:
    """Kill a worker and everything it started (its own process group), and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _failure(phase: str, code: int, out: str, tail: Sequence[str]) -> DemoError:
    """The one-line error of a worker that exited ``code`` without a record."""
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                error = json.loads(line).get("error")
            except ValueError:
                continue
            if isinstance(error, dict):
                return DemoError(
                    f"the {phase} start failed: {error.get('type')}: {error.get('message')}"
                )
    how = f"exited with status {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            how = f"was killed by {signal.Signals(-code).name}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    said = f"; its last line: {_one_line(last, 300)}" if last else ""
    return DemoError(f"the {phase} start failed: the worker {how} without reporting a cause{said}")


def _run_worker(
    phase: str,
    cache_dir: Path,
    sizes: Sequence[int],
    adaptor: str,
    device: str,
    progress: Callable[[str], None],
    *,
    name: str = "",
    traceback: bool = False,
) -> dict[str, Any]:
    """One start in a fresh process; its record. ``name``: the start's name in messages
    ("cold", "first", ...; default ``phase``)."""
    name = name or phase
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    # Inductor writes some caches under <temp dir>/torchinductor_<user> whatever
    # TORCHINDUCTOR_CACHE_DIR says (precompiled headers, its runtime caches), and creates that
    # directory in every process that uses Dynamo: the worker's temp dir is in the demo's cache,
    # so a run leaves nothing outside the directory it names and a cold start inherits nothing
    scratch = cache_dir / "torch-tmp"
    scratch.mkdir(mode=0o700, exist_ok=True)
    env["TMPDIR"] = str(scratch)
    env.setdefault("TRITON_CACHE_DIR", str(scratch / "triton"))
    command = [
        sys.executable,
        "-m",
        "torchshim",
        "_demo-worker",
        "--phase",
        phase,
        "--cache-dir",
        str(cache_dir),
        "--sizes",
        ",".join(str(s) for s in sizes),
        "--adaptor",
        adaptor,
        "--device",
        device,
        "--spawned-at",
        repr(time.time()),
        *(["--traceback"] if traceback else []),
    ]
    # its own process group: an interrupted or failed demo kills the worker's compiler
    # processes with it
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=20)
    try:
        progress(f"[{name} start: a fresh process, pid {proc.pid}]")
        if proc.stderr is not None:
            for line in proc.stderr:
                tail.append(line)
                progress(line.rstrip())
        out = proc.stdout.read() if proc.stdout is not None else ""
        code = proc.wait()
    except BaseException:  # Ctrl-C, or the parent failing: no orphan worker
        _kill(proc)
        raise
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if code != 0:
        raise _failure(name, code, out, tail)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise DemoError(
            f"the {name} start failed: the worker exited with status 0 but printed no record"
        )
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def run_demo(
    cache_dir: Path,
    sizes: Sequence[int],
    adaptor: str = "auto",
    device: str = "cpu",
    progress: Callable[[str], None] = lambda line: None,
    *,
    first_warm: bool = False,
    traceback: bool = False,
) -> DemoResult:
    """A first start from ``cache_dir`` (cold when it is empty; ``first_warm``: it holds an
    earlier run's entries), then a warm start from it, each a fresh process. Nothing in
    ``cache_dir`` is deleted.

    A warm start compiles nothing: no graph compiled, no kernel build, no FX-graph-cache miss.
    For ``eager``, which compiles and stores nothing, every start is such a start: Dynamo traces
    again and the graphs run uncompiled (counted in ``stats["eager"]``); there is nothing to load.
    """
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = {"cold": "first", "warm": "second"} if first_warm else {"cold": "cold", "warm": "warm"}
    records = {}
    for phase in ("cold", "warm"):
        records[phase] = _run_worker(
            phase,
            cache_dir,
            sizes,
            adaptor,
            device,
            progress,
            name=names[phase],
            traceback=traceback,
        )
    problems = []
    tolerance = TOLERANCE.get(device, 1e-3)
    for phase, record in records.items():
        worst = max(record["max_err"].values())
        if worst > tolerance:
            problems.append(f"{phase} outputs differ from eager by {worst:.3g} (> {tolerance})")
    warm = records["warm"]
    if warm["stats"]["compiled"] or warm["builds"] or warm["fx_misses"]:
        problems.append(
            f"the warm start compiled: {warm['stats']['compiled']} graph(s), "
            f"{warm['builds']} kernel build(s), {warm['fx_misses']} FX-graph-cache miss(es)"
        )
    return DemoResult(records["cold"], records["warm"], not problems, problems)
