"""One "host" of a fleet: a fresh process with a cache directory of its own that starts the demo
model through torchshim's backend with a shared remote tier. ``python fleet_host.py CACHE_DIR
REMOTE_URL OUT_JSON`` (``-`` for no remote tier). Used by tests/integration/test_fleet.py and
benchmarks/fleet.py. Writes what the backend did, the outputs' error against eager, and the seconds
from process start to every graph ready."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()

import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torchshim  # noqa: E402
from torchshim.demo import build_model, tokens  # noqa: E402

SIZES = (4,)
BATCHES = (3, 4)  # 3 runs the general graph, 4 its own
CONFIG = {"max_autotune": False}


def run(cache_dir: Path, remote: str) -> dict[str, Any]:
    record: dict[str, Any] = {"error": None}
    try:
        torch.manual_seed(0)
        model = build_model("cpu").eval()
        imported = time.perf_counter() - STARTED
        compiled = torchshim.compile(
            model,
            cache_dir=cache_dir,
            compile_sizes=SIZES,
            compiler_config=CONFIG,
            remote=remote if remote != "-" else "",
        )
        t0 = time.perf_counter()
        errors = {}
        with torch.no_grad():
            for batch in BATCHES:
                x = tokens(batch, "cpu")
                errors[str(batch)] = float((compiled(x) - model(x)).abs().max())
        record.update(
            {
                "max_err": errors,
                "stats": compiled.backend.stats.as_dict(),
                "import_s": round(imported, 3),
                "ready_s": round(time.perf_counter() - t0, 3),
                "process_s": round(time.perf_counter() - STARTED, 3),
            }
        )
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["trace"] = traceback.format_exc()[-3000:]
    return record


def main(argv: list[str]) -> int:
    cache_dir, remote, out = Path(argv[1]), argv[2], Path(argv[3])
    out.write_text(json.dumps(run(cache_dir, remote)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
