"""Inductor's compile-worker pool and torchshim's private kernel caches (shims/_kernel_cache.py).

On the H200 the pool, started during a stored compile, inherited the compile's staging directory
as its cache directory and created ``<staging>/inductor`` again after the entry was published:
a directory left in the cache's ``tmp/``. Here a real pool is started inside
``private_kernel_cache`` (the installed torch's ``AsyncCompile.process_pool``, in a fresh
process: the pool is one per process) and its process's environment read from ``/proc``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIRST_OF_SHIM, FULL
from torchshim.shims import active

POOL = """
import json, os, sys
import torch
import torch._inductor.config as config
from torch._inductor.async_compile import AsyncCompile
from torchshim.shims import active

stage = sys.argv[1]
original = AsyncCompile.__dict__["process_pool"]
with config.patch(compile_threads=2), active().module.private_kernel_cache(stage):
    inside = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    pool = AsyncCompile.process_pool()
    again = AsyncCompile.process_pool() is pool  # one pool per process, as before
process = pool.process  # SubprocPool (2.5 - 2.15, the default start method)
with open(f"/proc/{process.pid}/environ", "rb") as f:
    env = dict(
        item.split(b"=", 1) for item in f.read().split(b"\\0") if b"=" in item
    )
pool.shutdown()
print("RESULT " + json.dumps({
    "inside": inside,
    "worker": {k.decode(): v.decode() for k, v in env.items() if k.decode() in (
        "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")},
    "same_pool": again,
    "restored": AsyncCompile.__dict__["process_pool"] is original,
}))
"""


def test_a_load_compiles_its_kernels_in_this_process() -> None:
    import torch._inductor.config as config

    before = config.compile_threads
    with config.patch(compile_threads=4), active().module.kernels_in_process():
        assert config.compile_threads == 1
    assert config.compile_threads == before


def test_the_pool_hook_is_restored_after_a_private_kernel_cache(tmp_path: Path) -> None:
    from torch._inductor.async_compile import AsyncCompile

    original = AsyncCompile.__dict__["process_pool"]
    with active().module.private_kernel_cache(str(tmp_path)):
        assert AsyncCompile.__dict__["process_pool"] is not original
    assert AsyncCompile.__dict__["process_pool"] is original


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
@pytest.mark.skipif(not (FIRST_OF_SHIM or FULL), reason="once per shim module")
def test_a_pool_started_in_a_private_kernel_cache_keeps_the_outer_directories(
    tmp_path: Path,
) -> None:
    stage = tmp_path / "stage-x"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "outer")}
    env.pop("TRITON_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", POOL, str(stage)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["inside"] == str(stage / "inductor")  # the block's own directory ...
    # ... which the pool's process does not inherit
    assert result["worker"] == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "outer")}, result
    assert result["same_pool"] and result["restored"], result
    assert not stage.exists()  # nothing was created in the staging directory
