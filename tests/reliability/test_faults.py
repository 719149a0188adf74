"""The store under faults, with real Inductor artifacts and real processes: damaged entries of
each caching adaptor, SIGKILL at random points of a save, processes racing on one key, pruning
while others read, read-only and relocated caches.

``TORCHSHIM_FULL=1`` (one tox env sets it) runs the full trial counts; the first series of each
shim module runs shorter ones; the other series run the damaged-entry and read-only cases only
(the sweeps of processes exercise the store, which no torch series changes)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIRST_OF_SHIM, FULL
from tests.reliability import faults
from torchshim.cache import CacheStore, leases

pytestmark = pytest.mark.compile

HERE = Path(__file__).parent
KILL_TRIALS = 30 if FULL else 10
#: files of each stored entry damaged three ways (flip, truncate, empty), largest first
FILES_DAMAGED = 3 if FULL else 1
RACERS = 4 if FULL else 2
#: many processes: once per shim module and in the full env
SWEEPS = pytest.mark.skipif(
    not (FULL or FIRST_OF_SHIM), reason="process sweeps: once per shim module (CI time)"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    return env


def _run(args: list[str], timeout: float = 900, prefix: list[str] | None = None) -> Any:
    proc = subprocess.run(
        [*(prefix or []), sys.executable, str(HERE / "faults.py"), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One stored compile per caching adaptor, made in this process."""
    work = tmp_path_factory.mktemp("faults")
    out = {}
    for adaptor in faults.available():
        base = work / adaptor
        handle, _ = faults.compile_into(base, adaptor)
        entry = json.loads(handle)["entry"]
        out[adaptor] = {"base": base, "handle": handle, "entry": entry}
    return {"work": work, "adaptors": out}


def _largest(entry: Path, count: int) -> list[str]:
    manifest = json.loads((entry / "manifest.json").read_text())
    files = sorted(manifest["files"].items(), key=lambda kv: -kv[1]["size"])
    return [rel for rel, _ in files[:count]]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flip": _flip,
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)]),
    "empty": lambda p: p.write_bytes(b""),
    "delete": lambda p: p.unlink(),
}


def _set_build(entry: Path) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["meta"]["build"] = "another-torch-build"
    (entry / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def variants(compiled: dict[str, Any]) -> dict[str, Any]:
    """Damaged copies of each adaptor's cache, loaded (or recompiled) in one fresh process.

    Every copy lives at another path than the cache it was copied from, and the originals are
    moved away while the copies load: nothing can be read from where the entries were compiled,
    so the undamaged "relocated" copy is a real relocation."""
    spec: dict[str, Any] = {}
    damaged: list[str] = []  # every variant that must come back as a miss
    file_counts: dict[str, int] = {}  # files in each adaptor's stored entry
    work: Path = compiled["work"]
    for adaptor, item in compiled["adaptors"].items():
        entry_rel = CacheStore(item["base"]).entry_dir(item["entry"]).relative_to(item["base"])
        manifest = json.loads((item["base"] / entry_rel / "manifest.json").read_text())
        file_counts[adaptor] = len(manifest["files"])
        largest = _largest(item["base"] / entry_rel, FILES_DAMAGED)
        assert largest, f"{adaptor}: the stored entry has no files"
        cases: dict[str, Any] = {}
        for rank, rel in enumerate(largest):
            for kind in ("flip", "truncate", "empty"):
                cases[f"{kind} file {rank + 1}"] = lambda e, r=rel, k=kind: DAMAGE[k](e / r)
        cases["missing file"] = lambda e, r=largest[0]: DAMAGE["delete"](e / r)
        cases["garbage manifest"] = lambda e: (e / "manifest.json").write_bytes(os.urandom(200))
        cases["manifest of another build"] = _set_build
        cases["garbage index"] = None
        cases["relocated"] = None
        for name, damage in cases.items():
            base = work / "variants" / f"{adaptor}-{name.replace(' ', '_')}"
            shutil.copytree(item["base"], base)
            if damage is not None:
                damage(base / entry_rel)
            if name == "garbage index":
                (base / "index.json").write_bytes(b"\x00\x01garbage")
            spec[f"{adaptor}/{name}"] = {
                "base": str(base),
                "adaptor": adaptor,
                "handle": item["handle"],
            }
            if damage is not None:
                damaged.append(f"{adaptor}/{name}")
    spec_path = work / "variants.json"
    spec_path.write_text(json.dumps(spec))
    originals = [Path(item["base"]) for item in compiled["adaptors"].values()]
    for original in originals:
        original.rename(original.with_name(original.name + ".away"))
    try:
        results = _run(["load-variants", str(spec_path)])
        recreated = [str(p) for p in originals if p.exists()]
    finally:
        for original in originals:
            original.with_name(original.name + ".away").rename(original)
    return {
        "spec": spec,
        "damaged": damaged,
        "file_counts": file_counts,
        "results": results,
        "recreated": recreated,
    }


@SWEEPS  # a fresh process recompiling every damaged copy (the in-process checks: test_store)
def test_every_damaged_entry_is_a_miss_and_a_correct_recompile(variants: dict[str, Any]) -> None:
    results = variants["results"]
    assert sorted(results) == sorted(variants["spec"]), "the loader skipped variants"
    assert variants["recreated"] == [], "loading a copy recreated the original cache directory"
    report = []
    for name, result in results.items():
        assert result["error"] is None, (name, result.get("trace"))
        assert result["correct"], name
        kind = name.split("/", 1)[1]
        if kind in ("garbage index", "relocated"):
            assert result["outcome"] == "loaded", (name, result)
            assert result["quarantined"] == 0
            continue
        assert result["outcome"].startswith("miss"), (name, result)
        unusable = [w for w in result["warnings"] if "unusable" in w]
        assert len(unusable) == 1, (name, result["warnings"])
        assert result["counters"].get("corrupt") == 1, (name, result["counters"])
        assert result["quarantined"] == 1, name
        report.append(name)
    # per adaptor: flip, truncate and empty each of the FILES_DAMAGED largest files (fewer where
    # the entry has fewer), delete one, garbage manifest, manifest of another build
    per_adaptor = {a: 3 * min(FILES_DAMAGED, n) + 3 for a, n in variants["file_counts"].items()}
    assert sorted(report) == sorted(variants["damaged"])
    assert len(report) == sum(per_adaptor.values()), per_adaptor


@SWEEPS
def test_sigkill_at_random_points_of_a_save_never_tears_an_entry(
    compiled: dict[str, Any], tmp_path: Path
) -> None:
    item = compiled["adaptors"]["inductor"]
    source = CacheStore(item["base"]).entry_dir(item["entry"])
    rng = random.Random(20261129)  # noqa: S311 - kill times, not secrets
    outcomes = {"entry": 0, "no entry": 0}
    base = tmp_path / "killed"
    for _trial in range(KILL_TRIALS):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "faults.py"), "publish-loop", str(base), str(source)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        store = CacheStore(base)
        for entry in store.entries():
            assert store.verify(entry) is None, "a reader would see a torn entry"
        leftovers = list((base / "tmp").iterdir())
        # only a save's staging directories or a removal's trash, never anything published
        assert all(p.name.startswith(("stage-", "trash-")) for p in leftovers), leftovers
        lapsed = time.time() - leases.LEASE_S - 60
        for path in leftovers:  # a dead process renews no lease: its temporaries go once it lapses
            os.utime(path, (lapsed, lapsed))
        CacheStore(base)  # opening a store cleans up
        assert not list((base / "tmp").iterdir()), "temporaries of the dead process left"
        outcomes["entry" if store.entries() else "no entry"] += 1
    # what the last trial left loads (or, with no entry, recompiles) correctly in a fresh process
    spec = {"after kills": {"base": str(base), "adaptor": "inductor", "handle": item["handle"]}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = _run(["load-variants", str(tmp_path / "spec.json")])["after kills"]
    assert result["error"] is None and result["correct"], result
    print(f"SIGKILL trials: {KILL_TRIALS}, {outcomes}")


@SWEEPS
def test_processes_racing_on_one_key_all_succeed_and_leave_one_entry(tmp_path: Path) -> None:
    base = tmp_path / "race"
    start_at = time.time() + 12  # every racer has imported torch by then
    adaptor = faults.available()[-1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "faults.py"), "race", str(base), str(start_at), adaptor],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(RACERS)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["correct"] for r in results), results
    compiled_by = [r for r in results if r["stats"]["compiled"]]
    assert len(compiled_by) == 1, results  # one compiled; the others waited and loaded
    assert all(r["stats"]["loaded"] == 1 for r in results if r not in compiled_by), results
    store = CacheStore(base / "rank_0")
    assert len(store.entries()) == 1  # a static graph: one entry serves every call
    assert all(store.verify(e) is None for e in store.entries())


@SWEEPS
def test_prune_while_another_process_reads(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    for i in range(40):
        with store.writer(f"{i:02x}" * 16, f"k{i}") as writer:
            (writer.path / "payload").write_bytes(os.urandom(20000))
            writer.commit({"build": "b"})
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "faults.py"), "checkout-loop", str(store.root), "4"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    size = store.entries()[0].size
    for keep in range(39, -1, -3):
        store.prune(max_size=keep * size)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == [] and result["corrupt"] == 0, result
    assert result["hit"] > 0
    assert store.entries() == []


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
        for p in root.rglob("*")
        if p.is_file()
    }


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    command = ["unshare", "-rm", "true"]  # util-linux from PATH, as a user runs it
    probe = subprocess.run(command, capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


def test_read_only_cache_loads_hits_and_compiles_misses_in_memory(
    compiled: dict[str, Any], tmp_path: Path
) -> None:
    if not _unshare_works():
        pytest.skip("needs `unshare -rm` for a read-only mount (util-linux, user namespaces)")
    base = tmp_path / "ro"
    shutil.copytree(compiled["adaptors"]["inductor"]["base"], base)
    handles = {"inductor": compiled["adaptors"]["inductor"]["handle"]}
    (tmp_path / "handles.json").write_text(json.dumps(handles))
    before = _tree(base)
    mount = [
        "unshare",
        "-rm",
        "sh",
        "-c",
        f'mount --bind -o ro "{base}" "{base}" && exec "$@"',
        "-",
    ]
    result = _run(["readonly", str(base), str(tmp_path / "handles.json")], prefix=mount)
    entry = result["inductor"]
    assert "error" not in entry, entry.get("trace")
    assert entry["writable"] is False
    assert entry["hit_correct"] and entry["miss_correct"], entry
    assert entry["miss_handle"] is False  # compiled in memory, nothing stored
    assert _tree(base) == before
