"""Inductor's CPU vector-ISA probe (it builds and runs test programs in every fresh process) is
answered from torchshim's record: only a trusted record for exactly this torch build, compiler and
CPU is used, a signed cache only takes signed records, and a second process probes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_read_only_and_untrusted_stores(tmp_path: Path) -> None:
    root = tmp_path / "c"
    CacheStore(root).write_probes(FP, {"avx2|abc": True})
    read_only = CacheStore(root)
    read_only.writable = False  # what CacheStore finds for a read-only directory (see test_faults)
    assert read_only.read_probes(FP) == {"avx2|abc": True}
    read_only.write_probes(FP, {"avx2|abc": False})  # nothing written, no exception
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
def test_second_process_probes_nothing(tmp_path: Path) -> None:
    first = _probe_process(tmp_path, "kernels-1")
    records = list((tmp_path / "torchshim" / "probes").glob("*.json"))
    assert len(records) == 1
    if first:  # a CPU with vector ISAs: the first process built its test programs
        assert _built(tmp_path / "kernels-1")
    before = records[0].read_bytes()
    second = _probe_process(tmp_path, "kernels-2")
    assert second == first  # the same answer
    assert _built(tmp_path / "kernels-2") == []  # without building a test program
    assert records[0].read_bytes() == before
