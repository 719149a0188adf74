"""A cache entry's Triton kernels are found from a copy of the entry, by Triton's own file cache.

Triton names a compiled kernel's files by absolute path in its group file; an entry is compiled in
a staging directory and loaded from a private copy. Checked with the real ``FileCacheManager``
(no GPU needed: the cache is plain files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchshim.shims._common import relocate_triton_groups

triton_cache = pytest.importorskip("triton.runtime.cache", reason="Triton is not installed")

KEY = "K" * 52  # a kernel's directory: Triton's base32 hash, 52 characters


def _manager() -> object:
    return triton_cache.FileCacheManager(KEY)  # reads TRITON_CACHE_DIR


def _linked_copy(source: Path, target: Path) -> None:
    """What a checkout of a private store does: hard links of every file."""
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / path.relative_to(source))


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_copied_entry_finds_its_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = tmp_path / "stage"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(stage / "triton"))
    manager = _manager()
    files = {name: manager.put(f"{name} bytes".encode(), name) for name in ("k.cubin", "k.json")}  # type: ignore[attr-defined]
    manager.put_group("k.json", files)  # type: ignore[attr-defined]
    entry = tmp_path / "entry"
    os.rename(stage, entry)  # published
    checkout = tmp_path / "checkout"
    _linked_copy(entry, checkout)
    published = _contents(entry)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(checkout / "triton"))
    # what Triton saw before: the group names the staging directory, so the kernel is not found
    assert not (_manager().get_group("k.json") or {}).get("k.json")  # type: ignore[attr-defined]

    assert relocate_triton_groups(str(checkout)) == 1
    group = _manager().get_group("k.json")  # type: ignore[attr-defined]
    assert group is not None and set(group) == {"k.cubin", "k.json"}
    assert {Path(p).parent for p in group.values()} == {checkout / "triton" / KEY}
    assert Path(group["k.cubin"]).read_bytes() == b"k.cubin bytes"
    # the published entry, linked into the copy, is untouched (its files' hashes still verify)
    assert _contents(entry) == published
    assert relocate_triton_groups(str(checkout)) == 0  # nothing left to do
    assert relocate_triton_groups(str(tmp_path / "cpu-entry")) == 0  # no triton/ at all


def test_a_group_it_cannot_read_is_left_to_triton(tmp_path: Path) -> None:
    """A damaged or unknown group is skipped: Triton then compiles that kernel again."""
    here = tmp_path / "triton" / KEY
    here.mkdir(parents=True)
    (here / "__grp__a.json").write_text("{not json")
    (here / "__grp__b.json").write_text('{"child_paths": {"b.json": "/gone/elsewhere/b.json"}}')
    (here / "__grp__c.json").write_text('{"other": 1}')
    assert relocate_triton_groups(str(tmp_path)) == 0  # b's file is not beside it: left alone
    assert (here / "__grp__b.json").read_text().count("/gone/elsewhere") == 1
