"""Trust of the whole path, and a shared store where nobody is trusted but the key: real
directories, real modes, real links, FIFOs and devices, and a second and third uid (the tests run
as root; the shared-store processes run as other users)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.test_store import BUILD, FILES, make_entry
from torchshim.cache import CacheStore
from torchshim.cache.manifest import UNSIGNED
from torchshim.errors import CacheLockTimeout

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to chown and to run as other uids")
ID = "ab" * 16


def world_writable(path: Path, sticky: bool = False) -> Path:
    path.mkdir(exist_ok=True)
    path.chmod(0o1777 if sticky else 0o777)
    return path


# -- the whole path ------------------------------------------------------------------------------
def test_world_writable_parent_makes_a_private_child_untrusted(tmp_path: Path) -> None:
    parent = world_writable(tmp_path / "open")
    child = parent / "mine"
    child.mkdir(mode=0o700)
    store = CacheStore(child)
    assert not store.enabled
    assert f"{parent}, a directory on its path" in (store.reason or "")
    assert list(child.iterdir()) == []  # nothing written


def test_backend_rank_directory_is_not_created_in_a_world_writable_cache_dir(
    tmp_path: Path,
) -> None:
    from torchshim.compile_backend import Backend

    parent = world_writable(tmp_path / "open")
    backend = Backend(parent, adaptor="eager")
    store = CacheStore(backend.root)
    assert not store.enabled and "group or others can write" in (store.reason or "")
    assert list(parent.iterdir()) == []  # no rank_0 planted for others to swap


def test_sticky_parent_with_a_private_child_is_trusted(tmp_path: Path) -> None:
    parent = world_writable(tmp_path / "sticky", sticky=True)
    assert CacheStore(parent / "mine").enabled


def test_symlinked_root_is_judged_by_its_target_and_by_where_the_link_lives(
    tmp_path: Path,
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(private)
    assert CacheStore(link).enabled
    open_target = world_writable(tmp_path / "open-target")
    (tmp_path / "link2").symlink_to(open_target)
    assert not CacheStore(tmp_path / "link2").enabled
    open_dir = world_writable(tmp_path / "open-dir")
    (open_dir / "link3").symlink_to(private)
    store = CacheStore(open_dir / "link3")
    assert not store.enabled and str(open_dir) in (store.reason or "")


def test_default_cache_dir_and_probe_records_go_through_the_same_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchshim.adaptors import machine

    parent = world_writable(tmp_path / "open")
    monkeypatch.setenv("TORCHSHIM_CACHE_DIR", str(parent / "cache"))
    monkeypatch.setattr(machine, "_machine_stores", {})
    store = machine._machine_store()
    assert store is not None and not store.enabled
    assert list(parent.iterdir()) == []


# -- entries bound to their id and key ---------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_an_entry_copied_under_another_id_is_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed: bool
) -> None:
    if signed:
        monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "secret")
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    other = "cd" * 16
    target = store.entry_dir(other)
    target.parent.mkdir(parents=True)
    os.rename(entry, target)
    assert store.checkout(other, BUILD) is None
    assert store.counters["corrupt"] == 1


def test_an_entry_asked_for_under_another_key_is_a_miss(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    make_entry(store)  # written for "key text"
    assert store.read_manifest(ID, BUILD, "key text") is not None
    assert store.read_manifest(ID, BUILD, "another key") is None


# -- nothing followed, nothing read that is not a plain file of the right size --------------------
def test_symlinked_tmp_or_quarantine_disables_the_store_and_deletes_nothing_outside(
    tmp_path: Path,
) -> None:
    for sub in ("tmp", "quarantine"):
        root = tmp_path / f"c-{sub}"
        store = CacheStore(root)
        store.close()
        outside = tmp_path / f"outside-{sub}"
        outside.mkdir()
        victim = outside / "stage-deadbeef"
        victim.mkdir()
        (victim / "precious").write_text("keep me")
        old = time.time() - 10 * 24 * 3600
        os.utime(victim, (old, old))
        (root / sub).rmdir()
        (root / sub).symlink_to(outside)
        reopened = CacheStore(root)
        assert not reopened.enabled and "symbolic link" in (reopened.reason or "")
        assert (victim / "precious").read_text() == "keep me"


def test_entry_files_that_are_links_fifos_or_devices_are_misses_without_blocking(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(FILES["payload.bin"])  # same bytes: only the link itself is wrong
    kinds = {
        "link": lambda p: p.symlink_to(secret),
        "fifo": os.mkfifo,
        "device": lambda p: p.symlink_to("/dev/zero"),
    }
    for kind, make in kinds.items():
        store = CacheStore(tmp_path / kind)
        entry = make_entry(store)
        (entry / "payload.bin").unlink()
        make(entry / "payload.bin")
        started = time.monotonic()
        assert store.checkout(ID, BUILD) is None, kind
        assert time.monotonic() - started < 5, kind
        assert store.counters["corrupt"] == 1, kind
    if ROOT:  # a real character device node
        store = CacheStore(tmp_path / "node")
        entry = make_entry(store)
        (entry / "payload.bin").unlink()
        os.mknod(entry / "payload.bin", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        assert store.checkout(ID, BUILD) is None


def test_a_file_larger_than_its_manifest_is_refused_before_copying(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    (entry / "payload.bin").write_bytes(b"x" * (50 << 20))
    assert store.checkout(ID, BUILD) is None
    assert not list((store.root / "tmp").rglob("payload.bin"))


def test_stats_quarantine_note_and_lock_never_write_through_planted_links(
    tmp_path: Path,
) -> None:
    store = CacheStore(tmp_path / "c")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (store.root / "stats.jsonl").symlink_to(victim)
    store.count("hit", ID)
    assert victim.read_text() == "untouched"
    (store.root / "locks" / f"{ID}.lock").symlink_to(victim)
    with pytest.raises(CacheLockTimeout, match="symbolic link"), store.lock(ID, 1):
        pass
    assert victim.read_text() == "untouched"
    entry = make_entry(store)
    (entry / "manifest.json").write_bytes(b"garbage")
    (entry / "QUARANTINED.txt").symlink_to(victim)
    assert store.checkout(ID, BUILD) is None
    assert victim.read_text() == "untouched"


def test_non_ascii_signature_null_size_and_stray_entries_are_misses_not_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchshim.cli import main

    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "secret")
    signed = CacheStore(tmp_path / "signed")
    entry = make_entry(signed)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["signature"] = "é" * 64
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert signed.checkout(ID, BUILD) is None
    assert main(["cache", "info", "--cache-dir", str(signed.root)]) == 0
    monkeypatch.delenv("TORCHSHIM_CACHE_KEY")
    store = CacheStore(tmp_path / "c")
    second = make_entry(store, "cd" * 16)
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["files"]["payload.bin"]["size"] = None
    (second / "manifest.json").write_text(json.dumps(manifest))
    (store.root / "entries" / "zz").mkdir()  # stray directories and files
    (store.root / "entries" / "cd" / "not-an-entry").mkdir()
    (store.root / "entries" / "stray.txt").write_text("x")
    root = ["--cache-dir", str(store.root)]
    assert main(["cache", "info", *root]) == 0
    assert main(["cache", "verify", *root]) == 1
    assert "no valid size" in capsys.readouterr().out
    assert main(["cache", "clear", *root]) == 0
    assert store.entries() == []


def test_stale_temporaries_are_judged_by_lease_not_by_pid(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    dead = 2**22 + 12345  # a pid that cannot be alive here (another container's, say)
    live = store.root / "tmp" / f"stage-{dead}-cafe"
    live.mkdir()
    (live / "half-written").write_bytes(b"x")
    recent = time.time() - 60  # renewed a minute ago: its owner's heartbeat is alive
    os.utime(live, (recent, recent))
    stale = store.root / "tmp" / f"stage-{os.getpid()}-beef"  # even a live pid's
    stale.mkdir()
    stale_file = store.root / f".torchshim-cache.json.tmp-{dead}-cafe"
    stale_file.write_bytes(b"{")
    old = time.time() - 3600
    for path in (stale, stale_file):
        os.utime(path, (old, old))
    CacheStore(tmp_path / "c")  # opening a store cleans up
    assert live.exists()
    assert not stale.exists() and not stale_file.exists()


def test_counters_are_compacted_and_no_index_grows(tmp_path: Path) -> None:
    from torchshim.cache import store as store_module

    store = CacheStore(tmp_path / "c")
    for _ in range(3000):
        store.count("hit", ID)
    assert (store.root / "stats.jsonl").stat().st_size < 2 * store_module.STATS_COMPACT_BYTES
    assert store.stats()["hit"] == 3000
    make_entry(store)
    assert not (store.root / "index.json").exists()


# -- verify with a key -----------------------------------------------------------------------------
def test_verify_reports_unsigned_entries_and_quarantines_them_only_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchshim.cli import main

    store = CacheStore(tmp_path / "c")
    make_entry(store)
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "secret")
    root = ["--cache-dir", str(store.root)]
    assert main(["cache", "verify", *root]) == 0
    out = capsys.readouterr().out
    assert "0 bad, 1 unsigned" in out and "--quarantine-unsigned" in out
    assert [e.id for e in CacheStore(store.root).entries()] == [ID]
    assert CacheStore(store.root).verify_all() == [(ID, UNSIGNED)]
    assert main(["cache", "verify", "--quarantine-unsigned", *root]) == 0
    assert CacheStore(store.root).entries() == []


# -- operator commands never turn a directory into a cache -----------------------------------------
@pytest.mark.parametrize("command", ["info", "verify", "prune", "clear", "explain"])
def test_cache_commands_refuse_a_directory_that_is_not_a_cache(
    tmp_path: Path, command: str
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    demo_store = plain / "demo-auto-cpu" / "rank_0"
    CacheStore(demo_store).close()
    before = sorted(str(p) for p in plain.rglob("*"))
    extra = {"prune": ["--max-size", "0"], "explain": ["aa"]}.get(command, [])
    result = subprocess.run(
        [sys.executable, "-m", "torchshim", "cache", command, "--cache-dir", str(plain), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a torchshim cache" in lines[0], result.stderr
    assert str(plain / "demo-auto-cpu") in lines[0]  # points to what the user meant
    assert sorted(str(p) for p in plain.rglob("*")) == before


# -- shared mode: several users, one group, nobody trusted but the key -----------------------------
def _shared_action(root: Path, action: str) -> dict[str, object]:
    store = CacheStore(root)
    out: dict[str, object] = {"enabled": store.enabled, "writable": store.writable}
    entry = "ab" * 16
    if action == "write":
        with store.lock(entry, 5), store.writer(entry, "key text") as writer:
            (writer.path / "payload.bin").write_bytes(b"payload" * 100)
            writer.commit({"build": "b1"})
    else:
        with store.lock(entry, 5):
            copy = store.checkout(entry, {"build": "b1"})
            payload = copy is not None and (copy / "payload.bin").read_bytes()
            out["loaded"] = payload == b"payload" * 100
            out["private"] = copy is not None and not str(copy).startswith(str(root))
    store.close()
    return out


def _as_user(uid: int, gid: int, root: Path, action: str, key: str = "team secret") -> dict:
    """Run ``action`` on the shared store in a forked child that has become ``uid``:``gid``
    (another user of the group: permission bits apply to it, unlike to root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o022)
            os.environ["TORCHSHIM_CACHE_SHARED"] = "1"
            os.environ["TORCHSHIM_CACHE_KEY"] = key
            result: dict[str, object] = _shared_action(root, action)
        except BaseException as exc:  # report it to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        os.write(write_end, json.dumps(result).encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    data: dict[str, object] = json.loads(b"".join(chunks) or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, data
    return data


@needs_root
def test_shared_store_works_across_two_users_of_one_group(tmp_path: Path) -> None:
    import shutil
    import tempfile

    group = 4242
    top = Path(tempfile.mkdtemp(prefix="torchshim-shared-test-"))  # reachable by other uids
    try:
        top.chmod(0o755)
        shared = top / "shared"
        shared.mkdir()
        os.chown(shared, 0, group)
        shared.chmod(0o2770)
        writer = _as_user(4001, group, shared, "write")
        assert writer["enabled"] and writer["writable"], writer
        reader = _as_user(4002, group, shared, "read")
        assert reader["loaded"] and reader["private"], reader
        # a member of the group without the key cannot make a reader load what they wrote
        assert _as_user(4003, group, shared, "read", key="wrong key")["loaded"] is False
        entry = shared / "entries" / "ab" / ("ab" * 16)
        assert entry.stat().st_uid == 4001 and entry.stat().st_gid == group
    finally:
        shutil.rmtree(top, ignore_errors=True)


@needs_root
def test_shared_store_ignores_unsigned_probe_records_and_never_copies_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torchshim.cache.probes import write_probes

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o770)
    monkeypatch.setenv("TORCHSHIM_CACHE_SHARED", "1")
    with caplog.at_level(logging.WARNING, logger="torchshim"):
        store = CacheStore(shared)
    assert any("TORCHSHIM_CACHE_KEY is not set" in r.getMessage() for r in caplog.records)
    write_probes(store, "fp", {"avx512": False})  # what any group member could write
    assert store.read_probes("fp") == {}
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "secret")
    assert CacheStore(shared).read_probes("fp") == {}  # unsigned


# -- review findings: descriptors, not paths; bad input is a miss, never a crash -------------------
def test_directories_and_files_are_never_made_through_a_planted_link(tmp_path: Path) -> None:
    from torchshim.cache.files import UnsafePath, atomic_write_at, make_dir_at, open_dir

    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "file").write_text("untouched")
    box = tmp_path / "box"
    box.mkdir(mode=0o700)
    (box / "stage").symlink_to(victim)
    (box / "stats.jsonl").symlink_to(victim / "file")
    fd = open_dir(box)
    try:
        with pytest.raises(UnsafePath):
            make_dir_at(fd, "stage", 0o2770)
        atomic_write_at(fd, "stats.jsonl", b"new", 0o660)
    finally:
        os.close(fd)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700
    assert (victim / "file").read_text() == "untouched"
    assert (box / "stats.jsonl").read_bytes() == b"new" and not (box / "stats.jsonl").is_symlink()


def test_nested_json_in_a_manifest_or_the_counters_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    (entry / "manifest.json").write_bytes(b"[" * 200_000)
    assert store.checkout(ID, BUILD) is None
    assert store.counters["corrupt"] == 1
    with (store.root / "stats.jsonl").open("ab") as counters:
        counters.write(b"[" * 200_000 + b"\n")
    store.count("hit", ID)
    assert store.stats()["hit"] >= 1


def test_publishing_over_a_stray_file_replaces_it(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    (store.root / "entries" / ID[:2]).mkdir()
    (store.root / "entries" / ID[:2] / ID).write_text("not an entry")
    make_entry(store)
    assert store.checkout(ID, BUILD) is not None


def test_a_missing_locks_directory_is_a_lock_timeout_not_a_crash(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    (store.root / "locks").rmdir()
    with pytest.raises(CacheLockTimeout, match="cannot take the lock"), store.lock(ID, 1):
        pass


def test_the_users_own_directory_is_checked_even_when_caches_are_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchshim.adaptors import machine

    monkeypatch.setenv("TORCHSHIM_CACHE_SHARED", "1")
    monkeypatch.setenv("TORCHSHIM_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(machine, "_machine_stores", {})
    store = machine._machine_store()
    assert store is not None and store.enabled and not store.shared
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o700


def test_created_parents_get_the_stores_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        store = CacheStore(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert store.enabled
    for part in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE((tmp_path / part).stat().st_mode) == 0o700, part
    assert CacheStore(tmp_path / "a" / "b" / "c").enabled  # and the next process trusts it
