"""`torchshim demo` as a user runs it (a subprocess): every failure is one line on stderr naming its
cause, nothing is left behind that the run did not announce, Ctrl-C leaves no worker, and a re-run
with the same --cache-dir finds the earlier cache instead of deleting it.

Each run gets a TMPDIR of its own, which must be empty afterwards. The error cases fail before any
worker compiles anything; the runs that finish use the eager adaptor (nothing compiled, a few
seconds a start), except the one that needs stored Inductor entries (TORCHSHIM_FULL only).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

FULL = os.environ.get("TORCHSHIM_FULL") == "1"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    # the demo gets only the TORCHSHIM_* settings a test gives it (not a developer's or tox's)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHSHIM_")}
    env.update(TMPDIR=str(tmp), **extra)
    return env


def _demo(
    tmp_path: Path, *args: str, timeout: float = 300, **extra: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "torchshim", "demo", *args],
        capture_output=True,
        text=True,
        env=_env(tmp, **extra),
        timeout=timeout,
        check=False,
    )
    return proc, tmp


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed with one line on stderr naming the cause, and no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("torchshim: error: "), proc.stderr
    return lines[0]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here, so --device cuda does not fail")
    proc, tmp = _demo(tmp_path, "--device", "cuda")
    line = _one_line_error(proc)
    assert "--device cuda" in line and "no CUDA device" in line
    assert _tree(tmp) == []


def test_bad_lock_timeout_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    proc, tmp = _demo(tmp_path, "--adaptor", "eager", TORCHSHIM_LOCK_TIMEOUT="soon")
    line = _one_line_error(proc)
    assert "TORCHSHIM_LOCK_TIMEOUT" in line and "soon" in line
    assert _tree(tmp) == []
    assert "cold start" not in proc.stdout  # refused before a worker started


def test_cache_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a cache")
    proc, tmp = _demo(tmp_path, "--adaptor", "eager", "--cache-dir", str(afile))
    line = _one_line_error(proc)
    assert str(afile) in line and "not a directory" in line
    assert afile.read_text() == "not a cache"
    assert _tree(tmp) == []


def test_cache_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    target = afile / "cache"  # under a regular file: no process can create it, root included
    proc, _ = _demo(tmp_path, "--adaptor", "eager", "--cache-dir", str(target))
    line = _one_line_error(proc)
    assert str(target) in line and "cannot be created" in line
    assert _tree(tmp_path) == ["afile", "tmp"]


def test_failing_worker_reports_its_exception_in_one_line(tmp_path: Path) -> None:
    # A real failure only the worker sees: Inductor parses TORCHINDUCTOR_COMPILE_THREADS when the
    # worker imports it (the parent never imports Inductor), before anything is compiled.
    proc, tmp = _demo(tmp_path, "--adaptor", "eager", TORCHINDUCTOR_COMPILE_THREADS="lots")
    line = _one_line_error(proc)
    assert line.startswith("torchshim: error: the cold start failed: ValueError: "), line
    assert "'lots'" in line  # int()'s message: "invalid literal for int() with base 10: 'lots'"
    assert _tree(tmp) == []  # the temporary cache is removed on failure too


def test_ctrl_c_kills_the_worker_and_removes_the_temporary_cache(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # a run started in the background inherits SIGINT ignored, and Python then never turns Ctrl-C
    # into KeyboardInterrupt: the demo starts as from a terminal (a handled signal is reset to
    # its default in a new program; an ignored one stays ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torchshim", "demo", "--adaptor", "eager"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(tmp),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert str(tmp) in first and "removed at exit" in first, first
        progress = proc.stdout.readline()
        match = re.search(r"\[cold start: a fresh process, pid (\d+)\]", progress)
        assert match, progress
        worker = int(match.group(1))
        os.kill(worker, 0)  # running now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert [line for line in err.splitlines() if line.strip()] == ["torchshim: interrupted"]
    assert "Traceback" not in out
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    with pytest.raises(ProcessLookupError):  # nor anything the worker started
        os.killpg(worker, 0)
    assert _tree(tmp) == []


WHOLE_RUNS = pytest.mark.skipif(
    not FULL,
    reason="whole demo runs (two to four fresh torch processes each, 10-20 s): run where "
    "TORCHSHIM_FULL=1 (the torch211 env) only, for CI time; the eager backend path they drive "
    "is tested in every env by test_backend_options",
)


@WHOLE_RUNS
def test_temporary_cache_is_announced_and_removed_at_exit(tmp_path: Path) -> None:
    proc, tmp = _demo(tmp_path, "--adaptor", "eager", "--sizes", "2")
    first = proc.stdout.splitlines()[0]
    assert re.search(rf"cache {re.escape(str(tmp))}/torchshim-demo-\w+/demo-eager-cpu ", first)
    assert "removed at exit" in first
    assert "graphs compiled" in proc.stdout, proc.stdout + proc.stderr  # it ran to the end
    assert _tree(tmp) == []


@WHOLE_RUNS
def test_eager_rerun_finds_the_earlier_cache_and_passes(tmp_path: Path) -> None:
    # eager compiles and stores nothing: a warm start traces again and compiles nothing
    cache = tmp_path / "cache"
    first, tmp = _demo(tmp_path, "--adaptor", "eager", "--sizes", "2", "--cache-dir", str(cache))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "eager compiles and stores nothing" in first.stdout
    again, tmp = _demo(tmp_path, "--adaptor", "eager", "--sizes", "2", "--cache-dir", str(cache))
    assert again.returncode == 0, again.stdout + again.stderr
    demo = cache / "demo-eager-cpu"
    assert f"the cache at {demo} is left from an earlier run of this demo" in again.stdout
    assert "pass --fresh to clear it" in again.stdout
    assert [p.name for p in cache.iterdir()] == ["demo-eager-cpu"]
    assert _tree(tmp) == []


@WHOLE_RUNS
def test_fresh_clears_only_the_demos_own_sub_directory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "demo-eager-cpu").mkdir(parents=True)
    (cache / "demo-eager-cpu" / "from-an-earlier-run").write_text("")
    (cache / "demo-inductor-cpu").mkdir()
    (cache / "demo-inductor-cpu" / "kept").write_text("")
    (cache / "unrelated").write_text("")
    proc, tmp = _demo(
        tmp_path, "--adaptor", "eager", "--sizes", "2", "--cache-dir", str(cache), "--fresh"
    )
    assert "graphs compiled" in proc.stdout, proc.stdout + proc.stderr  # it ran to the end
    assert f"--fresh: removed this demo's earlier cache at {cache / 'demo-eager-cpu'}" in (
        proc.stdout
    )
    assert "earlier run" not in proc.stdout
    assert not (cache / "demo-eager-cpu" / "from-an-earlier-run").exists()
    assert (cache / "demo-inductor-cpu" / "kept").exists()
    assert (cache / "unrelated").exists()
    assert _tree(tmp) == []


@pytest.mark.compile
@pytest.mark.skipif(
    not FULL,
    reason="compiles the demo model with Inductor in two demo runs (about 2 min on 2 cores); "
    "runs where TORCHSHIM_FULL=1 (the torch211 env)",
)
def test_rerun_with_stored_entries_starts_warm(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, _ = _demo(tmp_path, "--sizes", "2", "--cache-dir", str(cache), timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "again.json"
    again, tmp = _demo(
        tmp_path, "--sizes", "2", "--cache-dir", str(cache), "--json", str(out), timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        f"the cache at {cache / 'demo-auto-cpu'} already holds this demo's entries: the first "
        "start is warm too; pass --fresh to start cold"
    ) in again.stdout
    records = json.loads(out.read_text())
    assert records["cold"]["stats"]["compiled"] == 0  # the first start loaded everything
    assert records["cold"]["stats"]["loaded"] > 0
    assert _tree(tmp) == []
