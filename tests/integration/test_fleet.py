"""A fleet through the real backend: 8 processes ("hosts"), each with a cache directory of its
own, start the demo model at once with one empty Redis: one compile per graph in the whole fleet,
every other host loads it from Redis, every output equals eager.

Eight fresh processes with real Inductor compiles and loads cost minutes on these machines, so this
runs where ``TORCHSHIM_FULL=1`` (the torch211 env) only; the remote tier's own tests
(tests/reliability/test_remote.py: faults, leases, a killed holder, publishes cut short) run in
every env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchshim
from tests.conftest import FULL
from tests.redis_server import RedisServer

HOST = Path(__file__).with_name("fleet_host.py")
HOSTS = 8

pytestmark = pytest.mark.skipif(
    not FULL, reason="8 processes with real compiles: TORCHSHIM_FULL=1 (the torch211 env) only"
)


def start_hosts(tmp_path: Path, url: str, count: int, key: str) -> list[dict]:
    env = {**os.environ, "TORCHSHIM_CACHE_KEY": key}
    procs = []
    for n in range(count):
        out = tmp_path / f"host{n}.json"
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(HOST), str(tmp_path / f"host{n}"), url, str(out)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
                out,
            )
        )
    records = []
    for proc, out in procs:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-3000:]
        record = json.loads(out.read_text())
        assert record["error"] is None, record.get("trace")
        records.append(record)
    return records


@pytest.mark.compile
def test_eight_hosts_with_one_redis_compile_each_graph_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    records = start_hosts(tmp_path, redis_server.url, HOSTS, "the fleet's key")
    graphs = {r["stats"]["graphs"] for r in records}
    assert len(graphs) == 1
    variants = records[0]["stats"]["compiled"] + records[0]["stats"]["loaded"]
    assert variants >= 2  # the general graph and size 4
    compiled = sorted(r["stats"]["compiled"] for r in records)
    loaded = sorted(r["stats"]["loaded"] for r in records)
    assert sum(compiled) == variants, compiled  # one compile per graph in the whole fleet
    assert sum(loaded) == variants * (HOSTS - 1), loaded
    assert all(r["stats"]["uncached"] == 0 for r in records)
    for record in records:
        assert max(record["max_err"].values()) < 1e-4, record["max_err"]
    stats = {
        k.decode(): int(v)
        for k, v in redis_server.client().hgetall("torchshim:v1:f1:stats").items()
    }
    # every graph published once; beside them, on torch 2.10+, the saved Dynamo trace, which every
    # host that started before another published it traces (cheap) and publishes too
    saves_traces = "supports_dynamo_program" in torchshim.capabilities()
    assert variants <= stats["put"] <= variants + (HOSTS if saves_traces else 0), stats
    assert variants * (HOSTS - 1) <= stats["hit"] <= (variants + saves_traces) * (HOSTS - 1), stats
