"""Bundles: export and import carry verified entries between hosts without a remote tier; a
tampered bundle, or one holding links or paths outside itself, publishes nothing; ``cache check``
compares the factors an entry was built for with this machine's real ones."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import FIRST_OF_SHIM, FULL
from tests.reliability.bundle_child import ENTRIES, write_entries
from torchshim import cli
from torchshim.cache import CacheStore
from torchshim.cache.bundle import export_bundle, import_bundle
from torchshim.errors import BundleError
from torchshim.shims import active

CHILD = Path(__file__).with_name("bundle_child.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    write_entries(tmp_path / "made")
    out = tmp_path / "cache.bundle"
    assert export_bundle([CacheStore.open_existing(tmp_path / "made")], out) == len(ENTRIES)
    return out


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "entries").glob("*/*")) if root.exists() else []


def test_an_imported_bundle_loads_verified_and_checks_as_hits(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "host2"
    done = import_bundle(bundle, target)
    assert sorted(done) == [(e, True) for e in ENTRIES]
    store = CacheStore(target)
    for entry_id in ENTRIES:
        copy = store.checkout(entry_id, {})
        assert copy is not None
        assert (copy / "kernel.so").read_bytes() == bytes(range(256)) * 40
    store.close()
    assert cli.main(["cache", "check", str(bundle), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["entries"]
    assert [r["verdict"] for r in rows] == ["hit", "hit"]
    assert cli.main(["cache", "check", str(target)]) == 0
    assert "2 of 2 entries will hit here" in capsys.readouterr().out


def _rewrite(bundle: Path, out: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Copy the bundle member by member, letting ``change(info, data)`` alter each."""
    with tarfile.open(bundle) as source, tarfile.open(out, "w") as target:
        for member in source:
            data = source.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            for info, payload in change(member, data):
                target.addfile(info, io.BytesIO(payload) if info.isfile() else None)


def _flip_kernel(member: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
    if member.name.endswith(f"{ENTRIES[1]}/kernel.so"):
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    yield member, data


def _add_link(member: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
    yield member, data
    if member.name.endswith(f"{ENTRIES[1]}/kernel.so"):
        link = tarfile.TarInfo(f"entries/_/{ENTRIES[1]}/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        yield link, b""


def _climb_out(member: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
    yield member, data
    if member.name.endswith(f"{ENTRIES[1]}/kernel.so"):
        escape = tarfile.TarInfo("entries/_/../../escaped.py")
        escape.size = 3
        yield escape, b"x=1"


TAMPERING = {"flipped byte": _flip_kernel, "symbolic link": _add_link, "path with ..": _climb_out}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_a_tampered_bundle_publishes_nothing(tmp_path: Path, bundle: Path, kind: str) -> None:
    bad = tmp_path / "bad.bundle"
    _rewrite(bundle, bad, TAMPERING[kind])
    target = tmp_path / "host2"
    with pytest.raises(BundleError, match="nothing was imported"):
        import_bundle(bad, target)
    assert _entries(target) == []  # not even the intact first entry
    assert not (tmp_path / "escaped.py").exists()
    assert cli.main(["cache", "import", str(bad), "--cache-dir", str(target)]) != 0
    assert _entries(target) == []


def test_check_names_the_factor_a_bundle_was_built_for_differently(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def other_torch(member: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
        if member.name.endswith("manifest.json"):
            manifest = json.loads(data)
            manifest["meta"]["factors"]["torch_key"] = "0" * 64
            data = json.dumps(manifest).encode()
            member.size = len(data)
        yield member, data

    edited = tmp_path / "edited.bundle"
    _rewrite(bundle, edited, other_torch)
    assert cli.main(["cache", "check", str(edited)]) == 1
    out = capsys.readouterr().out
    assert out.count("miss: torch build") == len(ENTRIES), out


def _other_series_python() -> Path | None:
    """An interpreter of another torch series at hand: a finished sibling tox env of this
    checkout (CI builds every env, two at a time; a developer may have some). tox installs the
    package last, so an env still being built (no torchshim in it yet) is passed over."""
    mine = f"torch{active().series.major}{active().series.minor}"
    for env in sorted((ROOT / ".tox").glob("torch*")):
        python = env / "bin" / "python"
        finished = any(env.glob("lib/python3*/site-packages/torchshim-*.dist-info"))
        if env.name != mine and python.exists() and finished:
            return python
    return None


@pytest.mark.skipif(
    not (FULL or FIRST_OF_SHIM), reason="a process of another series: once per shim module"
)
def test_a_bundle_from_another_torch_series_checks_as_torch_build_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python = _other_series_python()
    if python is None:
        pytest.skip("no env of another torch series at hand (.tox/torchNN) to build the bundle")
    out = tmp_path / "other.bundle"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    env.pop("TORCHSHIM_EXPECT_SERIES", None)
    made = subprocess.run(
        [str(python), str(CHILD), str(tmp_path / "other"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    assert cli.main(["cache", "check", str(out), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["entries"]
    assert len(rows) == len(ENTRIES)
    assert all(r["verdict"].startswith("miss: torch build") for r in rows), rows


def test_export_of_a_missing_cache_is_an_error_that_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.bundle"
    code = cli.main(["cache", "export", "--out", str(out), "--cache-dir", str(tmp_path / "none")])
    assert code != 0
    assert not out.exists()
