"""The remote tier on a real ``redis-server`` (no torch): entries move between hosts whole and
verified, chunked; every fault is a remote miss with one warning and costs nothing local; leases
let one host of many compile, and a dead holder is replaced after the lease expires.

``TORCHSHIM_FULL=1`` (the torch211 env) runs 20 trials of Redis stopped or killed in the middle of
a publish; other envs run 2."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import REDIS_SERVER, RedisServer
from tests.reliability.remote_child import BUILD, KEY, check_copy, write_entry
from torchshim.cache import TieredStore
from torchshim.cache.remote import PREFIX, RedisTier
from torchshim.errors import ConfigError

FULL = os.environ.get("TORCHSHIM_FULL", "").strip() == "1"
CHILD = Path(__file__).with_name("remote_child.py")
ENTRY = "cd" * 16
#: small chunks, so that the test entry (150 kB) is many chunks
CHUNK = 16_384


@pytest.fixture(autouse=True)
def _signed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts that share a remote tier sign their entries (without a key the tier warns once)."""
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "the fleet's key")


def tier(server: RedisServer, **kw: object) -> RedisTier:
    settings: dict = {"timeout": 1.0, "chunk": CHUNK, "lease": 30.0, **kw}
    return RedisTier(server.url, **settings)


def host(tmp_path: Path, name: str, remote: RedisTier) -> TieredStore:
    return TieredStore(tmp_path / name, remote=remote)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def remote_keys(server: RedisServer, kind: str) -> list[bytes]:
    return sorted(server.client().scan_iter(match=f"{PREFIX}{kind}:*"))


def test_an_entry_published_on_one_host_loads_verified_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    remote = tier(redis_server)
    one, two = host(tmp_path, "one", remote), host(tmp_path, "two", remote)
    write_entry(one, ENTRY)
    assert one.counters["remote_put"] == 1
    # 150,000 bytes in 16 KiB chunks: 10 chunks; 3,000 bytes: 1; the empty file: none
    assert len(remote_keys(redis_server, "c")) == 11
    assert len(remote_keys(redis_server, "e")) == 1
    assert not two.exists(ENTRY)
    assert two.read_manifest(ENTRY, BUILD, KEY) is not None
    copy = two.checkout(ENTRY, BUILD, KEY)
    assert copy is not None and check_copy(copy, ENTRY)
    assert two.counters["remote_hit"] == 1
    assert remote.stats()["hit"] == 1
    # a pulled entry is not sent back
    assert two.counters["remote_put"] == 0
    one.close()
    two.close()


def test_chunks_without_their_index_are_invisible(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    remote = tier(redis_server)
    write_entry(host(tmp_path, "one", remote), ENTRY)
    redis_server.client().delete(f"{PREFIX}e:{ENTRY}")  # as if the writer died before its index
    two = host(tmp_path, "two", remote)
    assert two.read_manifest(ENTRY, BUILD, KEY) is None
    assert not two.exists(ENTRY)
    assert two.counters["remote_miss"] == 1
    assert warnings_of(caplog) == []  # a plain miss


def _flip_chunk(server: RedisServer) -> None:
    client = server.client()
    key = remote_keys(server, "c")[0]
    data = bytearray(client.get(key))
    data[len(data) // 2] ^= 1
    client.set(key, bytes(data))


def _truncate_chunk(server: RedisServer) -> None:
    client = server.client()
    key = remote_keys(server, "c")[0]
    client.set(key, client.get(key)[:100])


def _drop_chunk(server: RedisServer) -> None:
    server.client().delete(remote_keys(server, "c")[0])


def _garble_index(server: RedisServer) -> None:
    server.client().set(f"{PREFIX}e:{ENTRY}", os.urandom(200))


CORRUPTIONS = {
    "flipped byte": _flip_chunk,
    "truncated value": _truncate_chunk,
    "evicted chunk": _drop_chunk,
    "garbage index": _garble_index,
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_damaged_remote_entry_is_a_miss_with_one_warning(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    remote = tier(redis_server)
    write_entry(host(tmp_path, "one", remote), ENTRY)
    CORRUPTIONS[kind](redis_server)
    two = host(tmp_path, "two", remote)
    write_entry(two, "ef" * 16)  # this host's own entry: it must survive
    for _ in range(2):
        assert two.read_manifest(ENTRY, BUILD, KEY) is None
    assert not two.exists(ENTRY)  # nothing of it was published here
    assert [w for w in warnings_of(caplog) if ENTRY in w] != []
    assert len([w for w in warnings_of(caplog) if ENTRY in w]) == 1
    copy = two.checkout("ef" * 16, BUILD, KEY)
    assert copy is not None and check_copy(copy, "ef" * 16)
    assert not list((two.root / "tmp").glob("stage-*"))


def test_an_entry_signed_with_another_key_is_a_miss(
    tmp_path: Path,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = tier(redis_server)
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "the writer's key")
    write_entry(host(tmp_path, "one", remote), ENTRY)
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "another key")
    two = host(tmp_path, "two", remote)
    assert two.read_manifest(ENTRY, BUILD, KEY) is None
    assert not two.exists(ENTRY)
    assert any("signature" in w for w in warnings_of(caplog))
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "the writer's key")
    three = host(tmp_path, "three", remote)
    assert three.read_manifest(ENTRY, BUILD, KEY) is not None  # the right key loads it


def test_an_unreachable_server_is_one_warning_and_then_skipped(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    remote = tier(redis_server)
    one = host(tmp_path, "one", remote)
    write_entry(one, ENTRY)
    redis_server.kill()
    write_entry(one, "ef" * 16)  # publishes locally, not remotely
    assert one.counters["remote_put"] == 1
    two = host(tmp_path, "two", remote)
    for n in range(5):
        assert two.read_manifest(f"{n:032x}", BUILD, KEY) is None
    assert len(warnings_of(caplog)) == 1 and "unreachable" in warnings_of(caplog)[0]
    for entry in (ENTRY, "ef" * 16):  # nothing local lost
        assert one.checkout(entry, BUILD, KEY) is not None


def _settled_connections(client: Any) -> int:
    """The server's count of connections received, once it has not changed for 0.5 s."""
    count, since, deadline = -1, time.monotonic(), time.monotonic() + 10
    while time.monotonic() < deadline:
        now = client.info("stats")["total_connections_received"]
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
        time.sleep(0.05)
    return int(count)


def test_a_stalled_server_costs_one_timeout_then_is_skipped(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    remote = tier(redis_server, timeout=0.5)
    two = host(tmp_path, "two", remote)
    client = redis_server.client()
    before = client.info("stats")["total_connections_received"]
    redis_server.pause()
    try:
        for n in range(5):
            assert two.read_manifest(f"{n:032x}", BUILD, KEY) is None
    finally:
        redis_server.resume()
    # the server accepts what queued while it was stopped only after it resumes, in any order
    # with the INFO below: read until the count stands still
    after = _settled_connections(client)
    assert after - before == 1  # the breaker kept the other four lookups off the server
    assert len(warnings_of(caplog)) == 1 and "no answer" in warnings_of(caplog)[0]
    assert two.counters["remote_miss"] == 5


def test_a_server_restarted_empty_is_a_miss_and_the_entry_is_compiled_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    remote = tier(redis_server)
    write_entry(host(tmp_path, "one", remote), ENTRY)
    redis_server.restart()  # no persistence: empty
    two = host(tmp_path, "two", remote)
    assert two.read_manifest(ENTRY, BUILD, KEY) is None
    # the back-off after the dropped connection passes; then the host republishes
    remote._down_until = 0.0
    write_entry(two, ENTRY)
    assert len(remote_keys(redis_server, "e")) == 1


def test_a_full_server_refuses_with_one_warning_and_the_local_publish_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(tmp_path / "redis", maxmemory="1200kb")
    try:
        remote = tier(server)
        one = host(tmp_path, "one", remote)
        big = {"huge.bin": 3 << 20}
        for n in range(2):
            write_entry(one, f"{n:032x}", big)
        full = [w for w in warnings_of(caplog) if "full" in w]
        assert len(full) == 1
        assert one.counters["remote_put"] == 0
        assert remote_keys(server, "e") == []  # no index without its chunks
        for n in range(2):
            copy = one.checkout(f"{n:032x}", BUILD, KEY)
            assert copy is not None and check_copy(copy, f"{n:032x}", big)
    finally:
        server.stop()


def test_the_remote_tier_without_the_redis_client_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"pip install 'torchshim\[fleet\]'"):
        RedisTier("redis://127.0.0.1:1/0")


def test_a_lease_is_held_renewed_released_and_expires(redis_server: RedisServer) -> None:
    a, b = tier(redis_server, lease=0.6), tier(redis_server, lease=0.6)
    token = a.acquire(ENTRY)
    assert token is not None and b.acquire(ENTRY) is None
    assert a.renew(ENTRY, token)
    b.release(ENTRY, "not the token")  # compare-and-delete: a wrong token deletes nothing
    assert b.acquire(ENTRY) is None
    a.release(ENTRY, token)
    token_b = b.acquire(ENTRY)
    assert token_b is not None
    deadline = time.monotonic() + 10
    while (token_a := a.acquire(ENTRY)) is None and time.monotonic() < deadline:
        time.sleep(0.1)  # b never renews: its lease expires
    assert token_a is not None
    assert not b.renew(ENTRY, token_b)


def _child(
    mode: str, cache: Path, url: str, *args: str, env: dict | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(cache), url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _results(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_four_hosts_racing_for_one_entry_compile_it_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    procs = [_child("race", tmp_path / f"h{n}", redis_server.url, ENTRY, "1.5") for n in range(4)]
    results = _results(procs)
    assert sorted(r["did"] for r in results) == ["compiled", "loaded", "loaded", "loaded"]
    assert all(r["whole"] for r in results)


def test_a_killed_lease_holder_is_replaced_after_the_expiry(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"TORCHSHIM_REMOTE_LEASE": "2"}
    holder = _child("hold", tmp_path / "h0", redis_server.url, ENTRY, env=env)
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline())["held"] == ENTRY
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    procs = [
        _child("race", tmp_path / f"h{n}", redis_server.url, ENTRY, "0.5", env=env) for n in (1, 2)
    ]
    results = _results(procs)
    assert sorted(r["did"] for r in results) == ["compiled", "loaded"]
    assert all(r["whole"] for r in results)


@pytest.mark.parametrize("trial", range(20 if FULL else 2))
def test_redis_stopped_or_killed_mid_publish_never_shows_a_partial_entry(
    tmp_path: Path, trial: int
) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")
    rng = random.Random(trial)  # noqa: S311 - reproducible fault timing, not a secret
    server = RedisServer(tmp_path / "redis", persist=True)
    try:
        env = {"TORCHSHIM_REMOTE_CHUNK": "4096", "TORCHSHIM_REMOTE_TIMEOUT": "0.5"}
        writer = _child("publish-loop", tmp_path / "writer", server.url, "200000", env=env)
        deadline = time.monotonic() + 30
        while not remote_keys(server, "c") and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        how = "stop" if trial % 2 == 0 else "kill"
        if how == "stop":
            server.pause()
            time.sleep(rng.uniform(0.0, 0.8))
            writer.kill()
            server.resume()
        else:
            server.kill()
            writer.kill()
            server.start()  # from its append-only file: what was acknowledged survives
        writer.communicate(timeout=30)
        reader = host(tmp_path, "reader", tier(server, timeout=5.0))
        shown = [bytes(k).decode().rsplit(":", 1)[-1] for k in remote_keys(server, "e")]
        files = {"big.bin": 200000, "small": 100}
        for entry_id in shown:
            copy = reader.checkout(entry_id, BUILD, KEY)
            assert copy is not None, (
                f"trial {trial} ({how}): index of {entry_id} without its chunks"
            )
            assert check_copy(copy, entry_id, files)
        # entries whose index was never written are misses, never partial loads
        assert reader.read_manifest(f"{len(shown):032x}", BUILD, KEY) is None
    finally:
        server.stop()


def test_cache_info_prune_and_explain_cover_the_remote_tier(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchshim import cli

    one = host(tmp_path, "one", tier(redis_server))
    write_entry(one, ENTRY)
    one.close()
    two = host(tmp_path, "two", tier(redis_server))
    assert two.read_manifest(ENTRY, BUILD, KEY) is not None
    two.close()
    url = redis_server.url
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path / "one"), "--remote", url]) == 0
    out = capsys.readouterr().out
    assert "(remote tier)" in out and "entries: 1," in out
    assert "hit 1" in out and "put 1" in out
    assert cli.main(
        ["cache", "explain", ENTRY[:10], "--remote", url, "--cache-dir", str(tmp_path / "two")]
    ) in (0, 1)
    assert f"entry {ENTRY[:12]}" in capsys.readouterr().out
    args = [
        "cache",
        "prune",
        "--older-than",
        "0s",
        "--remote",
        url,
        "--cache-dir",
        str(tmp_path / "two"),
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "will not evict" in out  # the test server runs without maxmemory
    assert "removed 1 remote entry" in out
    assert remote_keys(redis_server, "e") == []
