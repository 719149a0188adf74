"""A fleet's start with one Redis against every host compiling alone (CPU, the demo model).

    python benchmarks/fleet.py [--hosts 8]

Each host is a fresh process with an empty cache directory of its own (tests/integration/
fleet_host.py: the demo model through ``torchshim.compile`` with served size 4, so two graphs).
Runs, one after another so that the 2-core machine does not blur them:

* alone: a host compiling with no remote tier (what every host of a fleet pays today);
* host 1 with an empty Redis: compiles and publishes;
* hosts 2..N, each with an empty local directory: load from Redis.

Times are from process start to every graph ready (the first calls returned), and the backend's
own part. Also the bytes Redis holds for the model and what it served. Prints a table and writes
benchmarks/results/fleet-cpu-<torch series>.json. Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

HOST = ROOT / "tests" / "integration" / "fleet_host.py"


def host(cache_dir: Path, url: str, env: dict[str, str]) -> dict[str, Any]:
    out = cache_dir.with_suffix(".json")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HOST), str(cache_dir), url, str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    record = json.loads(out.read_text())
    if record["error"]:
        raise SystemExit(record.get("trace") or record["error"])
    record["wall_s"] = round(wall, 2)
    return record


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=8)
    args = parser.parse_args()
    from torchshim._version import installed_torch_version
    from torchshim.shims import active

    work = Path(tempfile.mkdtemp(prefix="torchshim-fleet-bench-"))
    env = {**os.environ, "TORCHSHIM_CACHE_KEY": "benchmark key", "PYTHONPATH": str(ROOT / "src")}
    server = RedisServer(work / "redis")
    try:
        rows: list[tuple[str, dict[str, Any]]] = []
        rows.append(("alone (compiles, no Redis)", host(work / "alone", "-", env)))
        client = server.client()
        before = int(client.info("memory")["used_memory"])
        rows.append(("host 1 (compiles, publishes)", host(work / "host1", server.url, env)))
        after_publish = int(client.info("memory")["used_memory"])
        stats_net = client.info("stats")
        out_before = int(stats_net.get("total_net_output_bytes", 0))
        for n in range(2, args.hosts + 1):
            rows.append((f"host {n} (loads from Redis)", host(work / f"host{n}", server.url, env)))
        out_after = int(client.info("stats").get("total_net_output_bytes", 0))
        counters = {k.decode(): int(v) for k, v in client.hgetall("torchshim:v1:f1:stats").items()}
        chunk_bytes = sum(
            int(client.strlen(k)) for k in client.scan_iter(match="torchshim:v1:f1:c:*")
        )
        index_bytes = sum(
            int(client.strlen(k)) for k in client.scan_iter(match="torchshim:v1:f1:e:*")
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    loaders = [r for name, r in rows if "loads" in name]
    summary = {
        "alone_ready_s": rows[0][1]["process_s"],
        "host1_ready_s": rows[1][1]["process_s"],
        "loaders_ready_s_median": sorted(r["process_s"] for r in loaders)[len(loaders) // 2],
        "loaders_ready_s_max": max(r["process_s"] for r in loaders),
        "redis_value_bytes": chunk_bytes + index_bytes,
        "redis_used_memory_delta": after_publish - before,
        "redis_bytes_served_to_loaders": out_after - out_before,
        "counters": counters,
    }
    print(
        f"{'host':<32} {'process start -> ready s':>24} {'backend s':>10} {'compiled':>9} {'loaded':>7}"
    )
    for name, r in rows:
        s = r["stats"]
        print(
            f"{name:<32} {r['process_s']:>24.2f} {s['seconds']:>10.2f} {s['compiled']:>9} "
            f"{s['loaded']:>7}"
        )
    print(
        f"Redis holds {summary['redis_value_bytes'] / 1024:.0f} KiB for the model "
        f"(used_memory +{summary['redis_used_memory_delta'] / 1024:.0f} KiB); served "
        f"{summary['redis_bytes_served_to_loaders'] / 1024:.0f} KiB to {len(loaders)} loaders; "
        f"counters {counters}"
    )
    series = active().series
    result = {
        "torch": installed_torch_version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "hosts": [{"name": name, **r} for name, r in rows],
        "summary": summary,
    }
    out = HERE / "results" / f"fleet-cpu-{series.major}.{series.minor}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
