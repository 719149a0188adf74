"""Bundles: a cache's entries in one file, for hosts that have no remote tier.

A bundle is an uncompressed tar (compiled artifacts are mostly machine code and compress poorly;
an operator can compress the file as a whole)::

    torchshim-bundle.json               what made it: format, when, Python, the entries' stores
    entries/<store>/<id>/manifest.json  each entry's manifest, as its store signed it
    entries/<store>/<id>/<file>         the entry's files

``<store>`` is ``_`` for a cache directory that is one store, ``rank_<n>`` for a backend's
directory. Each manifest records the key factors its entry was built for (torch build, device,
CUDA and Triton, configuration, Python), which ``torchshim cache check`` compares with the machine
it runs on.

A bundle is untrusted input. :func:`import_bundle` reads it without ``tarfile.extract``: a member
that is not a plain file or directory (a link, a device), a name that is absolute, climbs out
with ``..``, or is not an entry's file, is refused; every entry's manifest is checked as a store
checks one (with ``TORCHSHIM_CACHE_KEY``, its signature) and every file's size and SHA-256 is
verified, for all entries, before the first one is published. A bundle with one bad file
publishes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from torchshim import config
from torchshim.cache import manifest as manifests
from torchshim.cache.manifest import MANIFEST
from torchshim.cache.store import CacheStore, EntryInfo, valid_entry_id
from torchshim.errors import BundleError

__all__ = ["BUNDLE_FORMAT", "INDEX", "BundleEntry", "export_bundle", "import_bundle", "read_bundle"]

BUNDLE_FORMAT = 1
INDEX = "torchshim-bundle.json"
_STORE_NAME = re.compile(r"^(_|rank_[0-9]{1,6})$")
#: A member larger than this is refused (no compiled artifact is near it).
MAX_MEMBER_BYTES = 16 << 30


@dataclass
class BundleEntry:
    """One entry of a bundle: which store it came from and its (unverified) manifest."""

    store: str
    id: str
    manifest: dict[str, Any]

    def info(self, origin: Path) -> EntryInfo:
        size = sum(int(r.get("size", 0)) for r in self.manifest.get("files", {}).values())
        return EntryInfo(self.id, origin, size, 0.0, self.manifest)


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _store_name(store: CacheStore, roots: Sequence[Path]) -> str:
    return store.root.name if len(roots) > 1 or store.root.name.startswith("rank_") else "_"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    with tempfile.SpooledTemporaryFile() as buffer:
        buffer.write(data)
        buffer.seek(0)
        tar.addfile(info, buffer)


def export_bundle(stores: Sequence[CacheStore], out: Path) -> int:
    """Write every entry of ``stores`` that verifies into the bundle ``out`` (written beside it
    and renamed into place); how many entries."""
    roots = [s.root for s in stores]
    count = 0
    listed: dict[str, list[str]] = {}
    out = out.absolute()
    fd, staging = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    try:
        with tarfile.open(staging, "w", format=tarfile.PAX_FORMAT) as tar:
            entries: list[tuple[str, str, bytes, Path]] = []
            for store in stores:
                name = _store_name(store, roots)
                for entry in store.entries():
                    if entry.problem is not None or entry.manifest is None:
                        continue
                    copy = store.checkout(entry.id, {})  # a verified private copy
                    if copy is None:
                        continue
                    data = json.dumps(entry.manifest, indent=1, sort_keys=True).encode()
                    entries.append((name, entry.id, data, copy))
                    listed.setdefault(name, []).append(entry.id)
            index = {
                "format": BUNDLE_FORMAT,
                "created": time.time(),
                "python": python_version(),
                "platform": platform.platform(),
                "stores": listed,
            }
            _add_bytes(tar, INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
            for name, entry_id, data, copy in entries:
                base = f"entries/{name}/{entry_id}"
                _add_bytes(tar, f"{base}/{MANIFEST}", data)
                for rel in sorted(json.loads(data)["files"]):
                    tar.add(copy / rel, arcname=f"{base}/{rel}", recursive=False)
                count += 1
        os.replace(staging, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        for store in stores:
            store.close()
    return count


def _member_parts(member: tarfile.TarInfo) -> tuple[str, str, str] | None:
    """``(store, id, rel)`` of an entry's member; ``None`` for the index and directories;
    :class:`BundleError` for anything a bundle must not hold."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")) or "\x00" in name:
        raise BundleError(
            f"the bundle names a path outside itself ({name!r}); nothing was imported"
        )
    if member.isdir():
        return None
    if not member.isfile():
        raise BundleError(
            f"the bundle holds {name!r}, which is not a plain file (a link or a device); "
            "nothing was imported"
        )
    if member.size > MAX_MEMBER_BYTES:
        raise BundleError(
            f"the bundle's member {name!r} is implausibly large; nothing was imported"
        )
    if name == INDEX:
        return None
    parts = name.split("/")
    if len(parts) < 4 or parts[0] != "entries" or not _STORE_NAME.match(parts[1]):
        raise BundleError(
            f"the bundle holds {name!r}, which is not an entry's file; nothing was imported"
        )
    if not valid_entry_id(parts[2]):
        raise BundleError(
            f"the bundle holds an entry with a bad id ({parts[2]!r}); nothing was imported"
        )
    return parts[1], parts[2], "/".join(parts[3:])


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{path} is not a torchshim bundle ({exc})") from None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    handle = tar.extractfile(member)
    if handle is None:  # pragma: no cover - a plain file always has a reader
        raise BundleError(f"cannot read {member.name} from the bundle")
    return handle


def read_bundle(path: Path) -> tuple[dict[str, Any], list[BundleEntry]]:
    """The bundle's index and its entries' manifests (unverified: for ``cache check``)."""
    index: dict[str, Any] = {}
    entries: list[BundleEntry] = []
    with _open(path) as tar:
        for member in tar:
            parts = _member_parts(member)
            if member.name == INDEX:
                index = json.loads(_read(tar, member).read(manifests.MAX_MANIFEST_BYTES))
            elif parts is not None and parts[2] == MANIFEST:
                try:
                    data = json.loads(_read(tar, member).read(manifests.MAX_MANIFEST_BYTES))
                except ValueError:
                    data = {}
                entries.append(
                    BundleEntry(parts[0], parts[1], data if isinstance(data, dict) else {})
                )
    if index.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path} is not a torchshim bundle of format {BUNDLE_FORMAT} (its index says "
            f"{index.get('format')!r})"
        )
    return index, entries


def _copy_member(source: IO[bytes], target: Path) -> tuple[str, int]:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(target, "xb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _unpack_verified(path: Path, scratch: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every entry of the bundle, copied under ``scratch`` and verified; its manifest by
    (store, id). :class:`BundleError` on the first problem."""
    found: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
    manifest_data: dict[tuple[str, str], bytes] = {}
    with _open(path) as tar:
        for member in tar:
            parts = _member_parts(member)
            if parts is None:
                continue
            store, entry_id, rel = parts
            source = _read(tar, member)
            if rel == MANIFEST:
                manifest_data[store, entry_id] = source.read(manifests.MAX_MANIFEST_BYTES + 1)
                continue
            try:
                found.setdefault((store, entry_id), {})[rel] = _copy_member(
                    source, scratch / store / entry_id / rel
                )
            except FileExistsError:
                raise BundleError(
                    f"the bundle holds {member.name} twice; nothing was imported"
                ) from None
    key = config.cache_key()
    verified: dict[tuple[str, str], dict[str, Any]] = {}
    for where in sorted(set(found) | set(manifest_data)):
        store, entry_id = where
        manifest, problem = manifests.parse(manifest_data.get(where, b""), entry_id, {}, key)
        if manifest is None or problem is not None:
            raise BundleError(
                f"entry {entry_id} of the bundle is unusable: {problem}; nothing was imported"
            )
        files = found.get(where, {})
        listed = manifest["files"]
        if set(files) != set(listed):
            odd = sorted(set(files) ^ set(listed))[:3]
            raise BundleError(
                f"entry {entry_id} of the bundle does not hold what its manifest lists ({odd}); "
                "nothing was imported"
            )
        for rel, (digest, size) in files.items():
            if size != listed[rel]["size"] or digest != listed[rel]["sha256"]:
                raise BundleError(
                    f"file {rel} of entry {entry_id} in the bundle does not match its SHA-256 "
                    "(the bundle was damaged or tampered with); nothing was imported"
                )
        verified[where] = manifest
    return verified


def import_bundle(path: Path, cache_dir: Path) -> list[tuple[str, bool]]:
    """Verify the whole bundle, then publish its entries into ``cache_dir`` (a store, or a
    backend's directory for a bundle of ranks); ``(entry id, newly published)`` per entry."""
    scratch = Path(tempfile.mkdtemp(prefix="torchshim-import-"))
    try:
        verified = _unpack_verified(path, scratch)
        stores: dict[str, CacheStore] = {}
        published: list[tuple[str, bool]] = []
        for (name, entry_id), manifest in sorted(verified.items()):
            if name not in stores:
                stores[name] = CacheStore(cache_dir if name == "_" else cache_dir / name)
            store = stores[name]
            if not store.enabled or not store.writable:
                raise BundleError(f"cannot import into {store.root}: {store.reason or 'read-only'}")
            if store.exists(entry_id):
                published.append((entry_id, False))
                continue
            with store.writer(entry_id, str(manifest["key"])) as writer:
                for rel in manifest["files"]:
                    target = writer.path / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(scratch / name / entry_id / rel, target)
                writer.commit(manifest["meta"])
            published.append((entry_id, True))
        for store in stores.values():
            store.close()
        return published
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bundle_entries(path: Path) -> Iterator[EntryInfo]:
    """The bundle's entries as the operator's tools see them (for ``cache check``)."""
    index, entries = read_bundle(path)
    for entry in entries:
        info = entry.info(path)
        if "python" not in info.meta and isinstance(index.get("python"), str):
            info.meta["python"] = index["python"]  # recorded by the exporting process
        yield info
