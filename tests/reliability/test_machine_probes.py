"""Inductor's CPU vector-ISA probe (it builds and runs test programs in every fresh process) is
answered from torchshim's record: only a trusted record for exactly this torch build, compiler and
CPU is used, a signed cache only takes signed records, and a second process probes nothing."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIRST_OF_SHIM, FULL
from torchshim.cache import CacheStore
from torchshim.shims import active
from torchshim.shims._common import stable_digest

FP = '{"torch": "x", "cpu": "y"}'


def test_record_round_trips_and_is_bound_to_its_fingerprint(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    store.write_probes(FP, {"avx2|abc": True, "avx512|abc": False})
    assert store.read_probes(FP) == {"avx2|abc": True, "avx512|abc": False}
    assert store.read_probes(FP.replace("y", "z")) == {}
    (path,) = (tmp_path / "c" / "probes").iterdir()
    record = json.loads(path.read_text())
    record["fingerprint"] = "another machine"  # a record copied under this record's name
    path.write_text(json.dumps(record))
    assert store.read_probes(FP) == {}
    path.write_text("{not json")
    assert store.read_probes(FP) == {}


def test_signed_cache_ignores_unsigned_or_tampered_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    CacheStore(tmp_path / "c").write_probes(FP, {"avx2|abc": True})  # unsigned
    monkeypatch.setenv("TORCHSHIM_CACHE_KEY", "k1")
    signed = CacheStore(tmp_path / "c")
    assert signed.read_probes(FP) == {}
    signed.write_probes(FP, {"avx2|abc": True})
    assert signed.read_probes(FP) == {"avx2|abc": True}
    (path,) = (tmp_path / "c" / "probes").iterdir()
    record = json.loads(path.read_text())
    record["results"]["avx2|abc"] = False
    path.write_text(json.dumps(record))
    assert signed.read_probes(FP) == {}


_READ_ONLY = """
import json, os, sys
from pathlib import Path
from torchshim.cache import CacheStore
root, scratch, fp, uid = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# one write and read as the starting user first, so that every module they import lazily is
# loaded before this process may lose the right to read the interpreter's own directories
CacheStore(scratch).write_probes(fp, {"warm|up": True})
CacheStore(scratch).read_probes(fp)
if uid >= 0:  # root ignores permission bits: become an unprivileged user that owns the cache
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
store = CacheStore(root)
out = {"euid": os.geteuid(), "can_write_dir": os.access(root, os.W_OK),
       "enabled": store.enabled, "writable": store.writable, "read": store.read_probes(fp)}
try:
    store.write_probes(fp, {"avx2|abc": False, "avx512|abc": True})
    out["write_error"] = None
except Exception as exc:
    out["write_error"] = f"{type(exc).__name__}: {exc}"
out["read_again"] = CacheStore(root).read_probes(fp)
print(json.dumps(out))
"""


def _unprivileged_uid() -> int:
    import pwd  # POSIX only

    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return 65534


def _set_tree_mode(root: Path, dirs: int, files: int) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(dirs if path.is_dir() else files)


def _tree_bytes(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="needs POSIX permissions and user ids")
def test_read_only_store_reads_records_and_writes_nothing(tmp_path: Path) -> None:
    # A real read-only directory: the whole store chmod 0500 (files 0400). Root ignores permission
    # bits, so as root the store is given to an unprivileged user, and the process that opens it
    # becomes that user; the parent directory must then be one that user can reach.
    as_root = os.geteuid() == 0
    uid = _unprivileged_uid() if as_root else -1
    parent = Path(tempfile.mkdtemp(prefix="torchshim-ro-")) if as_root else tmp_path
    root = parent / "c"
    try:
        CacheStore(root).write_probes(FP, {"avx2|abc": True})
        if as_root:
            for path in [parent, *parent.rglob("*")]:
                os.chown(path, uid, uid, follow_symlinks=False)
        _set_tree_mode(root, 0o500, 0o400)
        before = _tree_bytes(root)
        proc = subprocess.run(
            [sys.executable, "-c", _READ_ONLY, str(root), str(tmp_path / "scratch"), FP, str(uid)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        after = _tree_bytes(root)
    finally:
        if root.exists():
            _set_tree_mode(root, 0o700, 0o600)
        if as_root:
            shutil.rmtree(parent)
    assert seen["euid"] != 0 and seen["can_write_dir"] is False, seen  # the condition is real
    assert seen["enabled"] is True and seen["writable"] is False, seen
    assert seen["read"] == {"avx2|abc": True}, seen
    assert seen["write_error"] is None, seen  # a read-only store writes nothing, raising nothing
    assert seen["read_again"] == {"avx2|abc": True}, seen
    assert after == before


def test_store_that_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    root = tmp_path / "c"
    CacheStore(root).write_probes(FP, {"avx2|abc": True})
    assert CacheStore(root).read_probes(FP) == {"avx2|abc": True}
    root.chmod(0o777)
    try:
        assert CacheStore(root).read_probes(FP) == {}  # others can write it: not trusted
    finally:
        root.chmod(0o700)


def test_shim_answers_known_probes_without_building() -> None:
    from torch._inductor import cpu_vec_isa

    shim = active().module
    original = cpu_vec_isa.VecISA.check_build
    isa = cpu_vec_isa.VecAVX2()
    code = "int main() { return 0; }  // not a real probe"
    token = f"{isa}|{stable_digest(code)}"
    with shim.cpu_probe_results({token: False}) as found:
        # answered from the record: no build, and False although the CPU may well have AVX2
        assert cpu_vec_isa.VecISA.check_build(isa, code) is False
    assert found == {}
    assert cpu_vec_isa.VecISA.check_build is original


_PROBE = """
import json, sys, torchshim
torchshim.warm_up()
from torch._inductor.cpu_vec_isa import valid_vec_isa_list
print(json.dumps([str(isa) for isa in valid_vec_isa_list()]))
"""


def _probe_process(tmp_path: Path, kernels: str) -> list[str]:
    env = {
        **os.environ,
        "TORCHSHIM_CACHE_DIR": str(tmp_path / "torchshim"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / kernels),
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _built(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.suffix in {".cpp", ".so"})


@pytest.mark.skipif(sys.platform != "linux", reason="the probe record is tested on Linux x86_64")
@pytest.mark.skipif(
    not (FULL or FIRST_OF_SHIM), reason="two fresh compiling processes: once per shim module"
)
def test_second_process_probes_nothing(tmp_path: Path) -> None:
    first = _probe_process(tmp_path, "kernels-1")
    records = list((tmp_path / "torchshim" / "probes").glob("*.json"))
    built_first = _built(tmp_path / "kernels-1")
    if not first and not built_first:
        pytest.skip(
            f"Inductor found no vector ISA to probe on this {platform.machine()} CPU: the first "
            "process built nothing, so there is no probe for a second process to skip"
        )
    # the first process really probed (TORCHSHIM_CACHE_DIR is new: no record answered it) ...
    assert built_first, "the first process found vector ISAs without building a test program"
    assert len(records) == 1
    assert json.loads(records[0].read_bytes())["results"], "the record holds no probe answers"
    before = records[0].read_bytes()
    second = _probe_process(tmp_path, "kernels-2")
    assert second == first  # the same answer
    assert _built(tmp_path / "kernels-2") == []  # without building a test program
    assert records[0].read_bytes() == before


def test_source_tree_fingerprint_sees_every_change_to_what_torch_key_reads(tmp_path: Path) -> None:
    from torchshim.shims._common import source_tree_fingerprint

    root = tmp_path / "torch"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "a.py").write_text("x = 1\n")
    (root / "include").mkdir()  # not a package: pkgutil (and torch_key) never reads it
    (root / "include" / "h.h").write_text("int x;\n")
    (root / "runtime").mkdir()  # not a package, but named (as torch_key names aoti_runtime)
    (root / "runtime" / "streams.h").write_text("int s;\n")
    (root / "top.py").write_text("")
    extra = (str(root / "runtime"),)

    def fingerprint() -> str:
        return source_tree_fingerprint(str(root), extra)

    def rewrite_keeping_mtime() -> None:
        # same size, and the modification time put back as `cp -p` or `tar` would: only the
        # change time (which nothing can set back) shows it
        before = a.stat()
        a.write_text("x = 2\n")
        os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))

    first = fingerprint()
    assert fingerprint() == first
    (root / "include" / "h.h").write_text("int y;\n")
    assert fingerprint() == first
    seen = {first}
    a = root / "pkg" / "a.py"
    changes = {
        "rewritten, same size and mtime": rewrite_keeping_mtime,
        "resized": lambda: a.write_text("x = 22\n"),
        "a named directory's file": lambda: (root / "runtime" / "streams.h").write_text("int t;\n"),
        "added": lambda: (root / "pkg" / "b.py").write_text(""),
        "removed": (root / "top.py").unlink,
    }
    for what, change in changes.items():
        change()
        now = fingerprint()
        assert now not in seen, what
        seen.add(now)


_TORCH_KEY = """
import json, sys
import torchshim
from torchshim.adaptors.machine import torch_source_key
from torchshim.shims import active
from torch._inductor.codecache import torch_key
ours = torch_source_key()
print(json.dumps({"ours": ours, "torch": torch_key().hex(), "primes": hasattr(torch_key, "set"),
                  "fingerprint": active().module.torch_source_fingerprint()}))
"""


def test_torch_source_key_is_recorded_once_and_then_not_recomputed(tmp_path: Path) -> None:
    """The first process hashes torch's sources and records the answer; a later one takes it
    from the record, torch's own cache filled with it (where the series allows, 2.8+)."""

    def run() -> dict[str, Any]:
        env = {**os.environ, "TORCHSHIM_CACHE_DIR": str(tmp_path / "user")}
        done = subprocess.run(
            [sys.executable, "-c", _TORCH_KEY],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    first = run()
    assert first["ours"] == first["torch"]
    store = CacheStore(tmp_path / "user", shared=False)
    assert store.read_facts(first["fingerprint"]) == {"torch_key": first["torch"]}
    marker = "ab" * 32  # a recorded answer that is not what hashing would give
    store.write_facts(first["fingerprint"], {"torch_key": marker})
    second = run()
    if second["primes"]:  # torch_key.set (2.8+): read from the record, torch hashed nothing
        assert second["ours"] == second["torch"] == marker
    else:  # 2.5 - 2.7 cannot fill torch's cache: it hashes its sources, and that answer stands
        assert second["ours"] == second["torch"] == first["torch"]
    store.write_facts(first["fingerprint"], {"torch_key": "not a digest"})  # damaged
    third = run()
    assert third["ours"] == third["torch"] == first["torch"]  # hashed again, and re-recorded
    assert store.read_facts(first["fingerprint"]) == {"torch_key": first["torch"]}


def test_the_fingerprint_covers_every_file_torch_key_names() -> None:
    """torch_key hashes torch's modules plus files it names (2.14 added streams.h): each must be
    in what the fingerprint stats, or an edit to it would leave a stale recorded key."""
    import inspect
    import re

    import torch._inductor.codecache as codecache

    source = inspect.getsource(codecache)
    block = re.search(r"extra_files = \(([^)]*)\)", source)
    assert block, "torch_key's extra_files not found: compare torch_source_fingerprint with it"
    named = re.findall(r"\"([^\"]+)\"", block.group(1))
    assert named
    root = Path(codecache.__file__).parent
    # what torch_source_fingerprint stats: every file of a package directory (cpp_prefix.h,
    # script.ld) and the whole aoti_runtime directory
    uncovered = [
        n
        for n in named
        if not (root / n).parent.joinpath("__init__.py").exists()
        and not n.startswith("codegen/aoti_runtime/")
    ]
    assert not uncovered, uncovered
