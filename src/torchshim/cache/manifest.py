"""An entry's manifest: what it holds (SHA-256 and size of every file), what it was written for,
and, with a signing key, an HMAC over all of it that binds the entry's id and key.

A manifest is untrusted input until :func:`parse` accepted it: every field is checked for type
and form, the id and key must be those of the entry that was asked for, and with a key set the
signature must verify. Any problem is one sentence, and the entry is a miss.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from torchshim.cache.trust import sign, signature_verifies

__all__ = [
    "BAD_SIGNATURE",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "STORE_FORMAT",
    "UNSIGNED",
    "bad_path",
    "build",
    "is_signature_problem",
    "parse",
    "payload",
]

#: Bumped when the layout or the manifest schema changes; entries of another format are misses.
STORE_FORMAT = 1
MANIFEST = "manifest.json"
#: A manifest larger than this is not read (a real one is a few KiB).
MAX_MANIFEST_BYTES = 16 << 20
#: The problem of an intact entry without a signature while a key is set.
UNSIGNED = "it is not signed, and TORCHSHIM_CACHE_KEY is set (an unsigned entry is a miss)"

#: The problem of a manifest whose signature does not verify with this process's key.
BAD_SIGNATURE = "its signature does not verify with TORCHSHIM_CACHE_KEY"

_HEX = frozenset("0123456789abcdef")


def is_signature_problem(problem: str) -> bool:
    return problem in (UNSIGNED, BAD_SIGNATURE)


def payload(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every field but the signature, in a canonical form (an
    empty payload, which no signature matches, for one too deep to serialise)."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    except (RecursionError, ValueError, TypeError):
        return b""


def build(
    entry_id: str,
    key: str,
    meta: Mapping[str, Any],
    files: Mapping[str, Mapping[str, Any]],
    signing_key: bytes | None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": STORE_FORMAT,
        "id": entry_id,
        "key": key,
        "created": time.time(),
        "meta": dict(meta),
        "files": {rel: dict(record) for rel, record in files.items()},
    }
    if signing_key is not None:
        manifest["signature"] = sign(signing_key, payload(manifest))
    return manifest


def bad_path(rel: object) -> bool:
    """Whether ``rel`` cannot be a file of an entry (empty, absolute, escaping it, the manifest)."""
    if not isinstance(rel, str) or not rel or rel == MANIFEST or "\x00" in rel:
        return True
    path = PurePosixPath(rel)
    return path.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/"))


def _file_problem(rel: str, record: object) -> str | None:
    if bad_path(rel):
        return f"its manifest names a path outside the entry ({rel!r})"
    if not isinstance(record, dict):
        return f"its manifest has no record for {rel}"
    size, digest = record.get("size"), record.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"its manifest gives {rel} no valid size ({size!r})"
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
        return f"its manifest gives {rel} no valid SHA-256"
    return None


def parse(
    data: bytes,
    entry_id: str,
    expect: Mapping[str, Any],
    signing_key: bytes | None,
    key: str | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """The manifest in ``data`` for entry ``entry_id`` (and caller's ``key``, when given), or
    why it cannot be trusted. ``expect``: values its ``meta`` must hold (the torch build...)."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return None, f"its manifest is unreadable ({type(exc).__name__})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, "its manifest is malformed"
    if manifest.get("format") != STORE_FORMAT:
        return None, (
            f"it was written in cache format {manifest.get('format')!r}, this torchshim "
            f"uses {STORE_FORMAT}"
        )
    if signing_key is not None:
        if "signature" not in manifest:
            return None, UNSIGNED
        if not signature_verifies(signing_key, payload(manifest), manifest.get("signature")):
            return None, BAD_SIGNATURE
    if manifest.get("id") != entry_id:
        return None, (
            f"its manifest is for entry {str(manifest.get('id'))[:40]!r}, not this one (an "
            "entry copied or moved under another id)"
        )
    if key is not None and manifest.get("key") != key:
        return None, "its manifest is for another cache key (an entry copied under another key)"
    for rel, record in manifest["files"].items():
        problem = _file_problem(rel, record)
        if problem is not None:
            return None, problem
    meta = manifest.get("meta")
    if not isinstance(meta, dict):
        return None, "its manifest has no valid meta record"
    for name, wanted in expect.items():
        if meta.get(name) != wanted:
            return None, (
                f"it was written for {name} {meta.get(name)!r}, this process has {wanted!r} "
                "(another torch build or configuration)"
            )
    return manifest, None
