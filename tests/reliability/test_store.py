"""The cache store on its own (no compiler): every corruption kind is a miss with one warning, a
counter and a quarantined entry; temporaries are cleaned; signatures and trust (more in test_trust)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from torchshim.cache import CacheStore
from torchshim.errors import CacheCorruptionError

BUILD = {"build": "b1"}
FILES = {"payload.bin": os.urandom(4096), "inductor/xx/module.py": b"x = 1\n" * 50, "empty": b""}


def make_entry(store: CacheStore, entry_id: str = "ab" * 16, meta: dict | None = None) -> Path:
    with store.writer(entry_id, "key text") as writer:
        for rel, data in FILES.items():
            (writer.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (writer.path / rel).write_bytes(data)
        writer.commit({**BUILD, **(meta or {})})
    return store.entry_dir(entry_id)


def test_publish_then_checkout_gives_the_verified_files(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["files"]) == set(FILES)
    assert manifest["files"]["payload.bin"]["size"] == 4096
    copy = store.checkout("ab" * 16, BUILD)
    assert copy is not None and copy != entry
    for rel, data in FILES.items():
        assert (copy / rel).read_bytes() == data
    assert not [p for p in (store.root / "tmp").iterdir() if p != copy]
    assert store.counters["hit"] == 1
    store.close()
    assert not copy.exists()
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == oct(0o700)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _manifest_edit(entry: Path, change: dict) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(change)
    (entry / "manifest.json").write_text(json.dumps(manifest))


CORRUPTIONS = {
    "flipped byte": lambda e: _flip(e / "payload.bin"),
    "truncated file": lambda e: (e / "payload.bin").write_bytes(b"\x00" * 100),
    "emptied file": lambda e: (e / "inductor/xx/module.py").write_bytes(b""),
    "missing file": lambda e: (e / "payload.bin").unlink(),
    "garbage manifest": lambda e: (e / "manifest.json").write_bytes(os.urandom(64)),
    "missing manifest": lambda e: (e / "manifest.json").unlink(),
    "manifest of another build": lambda e: _manifest_edit(e, {"meta": {"build": "other"}}),
    "manifest of another format": lambda e: _manifest_edit(e, {"format": 999}),
    "manifest escaping the entry": lambda e: _manifest_edit(
        e, {"files": {"../../escape": {"sha256": "0", "size": 1}}}
    ),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_every_corruption_is_one_warning_a_counter_and_a_quarantine(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    CORRUPTIONS[kind](entry)
    with caplog.at_level(logging.WARNING, logger="torchshim"):
        assert store.checkout("ab" * 16, BUILD) is None
        assert store.checkout("ab" * 16, BUILD) is None  # now simply absent: a plain miss
    warnings = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert store.counters["corrupt"] == 1 and store.counters["quarantined"] == 1
    assert not entry.exists()
    (quarantined,) = list((store.root / "quarantine").iterdir())
    assert (quarantined / "QUARANTINED.txt").read_text().strip()
    assert not list((store.root / "tmp").iterdir())  # the failed copy is gone too
    assert store.stats()["corrupt"] == 1  # recorded for `torchshim cache info`


def test_strict_mode_raises_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSHIM_STRICT", "1")
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    _flip(entry / "payload.bin")
    with pytest.raises(CacheCorruptionError, match="TORCHSHIM_STRICT"):
        store.checkout("ab" * 16, BUILD)
    assert entry.exists()  # nothing moved in strict mode: the operator looks at it


def test_a_second_publisher_keeps_the_first_entry(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    with store.writer("cd" * 16, "k") as first, store.writer("cd" * 16, "k") as second:
        (first.path / "f").write_bytes(b"first")
        (second.path / "f").write_bytes(b"second")
        first.commit(BUILD)
        second.commit(BUILD)
    assert second.kept_existing and not first.kept_existing
    assert (store.entry_dir("cd" * 16) / "f").read_bytes() == b"first"
    assert not list((store.root / "tmp").iterdir())


def test_a_published_entry_over_a_corrupt_one_replaces_it(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    (entry / "manifest.json").write_bytes(b"{")
    make_entry(store)
    assert store.checkout("ab" * 16, BUILD) is not None
    assert len(list((store.root / "quarantine").iterdir())) == 1


def test_signed_entries_fail_when_tampered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "operator secret")
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    assert json.loads((entry / "manifest.json").read_text())["signature"]
    assert store.checkout("ab" * 16, BUILD) is not None
    # a tamperer who rewrites a file and its manifest hash cannot re-sign without the key
    (entry / "payload.bin").write_bytes(b"evil")
    manifest = json.loads((entry / "manifest.json").read_text())
    import hashlib

    manifest["files"]["payload.bin"] = {"sha256": hashlib.sha256(b"evil").hexdigest(), "size": 4}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert store.checkout("ab" * 16, BUILD) is None
    assert store.counters["corrupt"] == 1
    # an unsigned entry is a miss when a key is set
    monkeypatch.delenv("TORCHSHIM_CACHE_KEY")
    unsigned = CacheStore(tmp_path / "d")
    make_entry(unsigned)
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "operator secret")
    assert CacheStore(tmp_path / "d").checkout("ab" * 16, BUILD) is None


def test_group_writable_directory_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="torchshim"):
        store = CacheStore(shared)
    assert not store.enabled and "others can write" in (store.reason or "")
    assert any("TORCHSHIM_CACHE_SHARED=1" in r.getMessage() for r in caplog.records)
    assert store.checkout("ab" * 16, BUILD) is None
    assert not list(shared.iterdir())  # nothing written into an untrusted directory
    monkeypatch.setenv("TORCHSHIM_CACHE_SHARED", "1")
    assert CacheStore(shared).enabled


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_directory_of_another_user_is_not_used(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    store = CacheStore(theirs)
    assert not store.enabled and "owned by uid 65534" in (store.reason or "")


def test_prune_evicts_least_recently_used_first(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    now = time.time()
    ids = [f"{i:02d}" * 16 for i in range(4)]
    for age, entry_id in zip((400, 300, 200, 100), ids, strict=True):
        entry = make_entry(store, entry_id)
        os.utime(entry, (now - age, now - age))
    size = store.entries()[0].size
    assert store.prune(older_than=350) == [ids[0]]
    assert store.prune(max_size=2 * size) == [ids[1]]
    assert sorted(e.id for e in store.entries()) == ids[2:]
    assert store.stats()["put"] == 4  # counters survive the compaction prune does


def test_prune_skips_an_entry_being_written(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    make_entry(store)
    with store.lock("ab" * 16):
        # another process holds the lock: flock locks conflict between open file descriptions
        assert CacheStore(tmp_path / "c").prune(max_size=0) == []
    assert store.prune(max_size=0) == ["ab" * 16]


def _entry_with_factors(store: CacheStore, entry_id: str, **changes: str) -> None:
    factors = {"torch_key": "t1", "system": "cpu", "inductor_config": "c1"} | changes
    backend = {"graph": "g1", "compiler_config": "{}", "rank": "0"}
    make_entry(store, entry_id, {"factors": factors, "backend_factors": backend, "adaptor": "x"})


def test_cache_cli_info_verify_prune_explain_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchshim.cli import main

    store = CacheStore(tmp_path / "c")
    _entry_with_factors(store, "aa" * 16)
    _entry_with_factors(store, "bb" * 16, torch_key="t2")
    root = ["--cache-dir", str(store.root)]
    assert main(["cache", "info", "--entries", *root]) == 0
    out = capsys.readouterr().out
    assert "entries: 2" in out and "aa" * 16 in out
    assert main(["cache", "explain", "aa", "bb", *root]) == 1
    out = capsys.readouterr().out
    assert "torch build" in out and "t1" in out and "t2" in out
    assert main(["cache", "explain", "aa", "aa", *root]) == 0
    assert "no key factor differs" in capsys.readouterr().out
    assert main(["cache", "verify", *root]) == 0
    _flip(store.entry_dir("bb" * 16) / "payload.bin")
    assert main(["cache", "verify", *root]) == 1
    assert "does not match its SHA-256" in capsys.readouterr().out
    assert [e.id for e in store.entries()] == ["aa" * 16]  # the bad one was quarantined
    assert main(["cache", "prune", "--max-size", "0", *root]) == 0
    assert store.entries() == []
    assert main(["cache", "prune", *root]) == 2  # nothing to prune by: a usage error
    _entry_with_factors(store, "cc" * 16)
    assert main(["cache", "clear", *root]) == 0
    assert store.entries() == [] and not list((store.root / "quarantine").iterdir())
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "nowhere")]) == 2
    assert "no cache directory" in capsys.readouterr().err


def test_backend_directories_are_read_per_rank(tmp_path: Path) -> None:
    from torchshim.cli_cache import stores as _stores

    for rank in (0, 1):
        make_entry(CacheStore(tmp_path / f"rank_{rank}"))
    assert [s.root.name for s in _stores(str(tmp_path))] == ["rank_0", "rank_1"]


TUNED = "inductor/zz/" + "c" * 64 + ".best_config"


def _tuning_file(directory: Path, data: bytes = b'{"XBLOCK": 128, "num_warps": 4}') -> None:
    (directory / TUNED).parent.mkdir(parents=True, exist_ok=True)
    (directory / TUNED).write_bytes(data)


def test_a_kept_staging_directory_outlives_the_publish_until_close(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    with store.writer("ab" * 16, "key text") as writer:
        (writer.path / "payload.bin").write_bytes(b"p" * 100)
        writer.keep = True
        writer.commit(BUILD)
    assert (store.entry_dir("ab" * 16) / "payload.bin").read_bytes() == b"p" * 100
    assert (writer.path / "payload.bin").is_file()  # what the compile's kernels run from
    store.close()
    assert not writer.path.exists()
    assert not list((store.root / "tmp").iterdir())


@pytest.mark.parametrize("signed", [False, True])
def test_amend_adds_new_files_and_never_changes_listed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed: bool
) -> None:
    if signed:
        monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "operator secret")
    store = CacheStore(tmp_path / "c")
    entry = make_entry(store)
    before = json.loads((entry / "manifest.json").read_text())
    source = tmp_path / "live"
    _tuning_file(source)
    for rel in FILES:  # the same names with other bytes: never written over
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(b"changed")
    (source / "big.best_config").write_bytes(b"x" * ((1 << 20) + 1))
    names = [TUNED, *FILES, "../escape", "manifest.json", "big.best_config", "absent.best_config"]
    assert store.amend("ab" * 16, source, names) == 1
    after = json.loads((entry / "manifest.json").read_text())
    assert set(after["files"]) == {*FILES, TUNED}
    assert {rel: after["files"][rel] for rel in FILES} == before["files"]
    assert ("signature" in after) == signed
    for rel, data in FILES.items():
        assert (entry / rel).read_bytes() == data
    copy = store.checkout("ab" * 16, BUILD)  # verifies every file, the new one included
    assert copy is not None and (copy / TUNED).read_bytes() == (source / TUNED).read_bytes()
    assert store.amend("ab" * 16, source, [TUNED]) == 0  # listed now
    assert store.counters["amended"] == 1
    store.close()


def test_amend_leaves_a_missing_or_bad_entry_as_it_is(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    source = tmp_path / "live"
    _tuning_file(source)
    assert store.amend("cd" * 16, source, [TUNED]) == 0  # no such entry
    entry = make_entry(store)
    (entry / "manifest.json").write_text("{")  # a bad manifest: not rewritten
    assert store.amend("ab" * 16, source, [TUNED]) == 0
    assert (entry / "manifest.json").read_text() == "{"
    assert not (entry / TUNED).exists()
    store.close()
