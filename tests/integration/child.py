"""Running a test's second process: the checkout on its path, compiles counted where they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def run_child(script: str, args: list[str], out: Path, what: str) -> Any:
    """Run ``tests/integration/<script> ARGS`` in a fresh Python and return the JSON it wrote to
    ``out``; a failing process raises with the end of its stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    # any compile runs in this process (no compile workers), where its counters see it
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())
