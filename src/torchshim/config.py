"""Every ``TORCHSHIM_*`` variable the library reads, read here and nowhere else.

Each variable is read when it is first needed (so a process may set it before that), validated,
and a bad value is one :class:`~torchshim.errors.ConfigError` that names the variable, what it
holds and the accepted form. :func:`check_environment` validates all of them at once: the CLI and
the backend call it before anything expensive starts, so a typo fails in one line rather than
inside a Dynamo trace.

One spelling of a switch everywhere: ``1``, ``true``, ``yes``, ``on`` mean on; ``0``, ``false``,
``no``, ``off`` and the empty string mean off; anything else is an error.

This module imports nothing from torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from torchshim.errors import ConfigError

__all__ = [
    "ADAPTOR_NAMES",
    "COMPILERS",
    "VARIABLES",
    "AdaptorName",
    "Variable",
    "adaptor",
    "allow_untested",
    "cache_dir",
    "cache_key",
    "cache_shared",
    "check_environment",
    "compile_sizes",
    "compiler_config",
    "cudagraphs",
    "direct_load",
    "lock_timeout",
    "pad_batch",
    "parse_compile_sizes",
    "parse_flag",
    "parse_lock_timeout",
    "parse_remote",
    "rank",
    "remote",
    "remote_chunk",
    "remote_lease",
    "remote_timeout",
    "remote_ttl",
    "strict",
]

#: The adaptors a user can name; ``auto`` picks standalone where torch has it, else inductor.
AdaptorName = Literal["auto", "inductor", "inductor_standalone", "eager"]
ADAPTOR_NAMES: tuple[str, ...] = get_args(AdaptorName)
#: The adaptors themselves (``auto`` is a choice among them).
COMPILERS: tuple[str, ...] = tuple(n for n in ADAPTOR_NAMES if n != "auto")

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off", ""})
DEFAULT_LOCK_TIMEOUT_S = 600.0
DEFAULT_REMOTE_TIMEOUT_S = 2.0
DEFAULT_REMOTE_LEASE_S = 30.0
DEFAULT_REMOTE_CHUNK = 8 << 20
#: The URL schemes of a remote tier (Redis over TCP, over TLS, over a Unix socket).
REMOTE_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the accepted form and what it means (for the README
    and for error messages)."""

    name: str
    form: str
    meaning: str


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "TORCHSHIM_CACHE_DIR",
            "a directory path",
            "the cache directory (default: the user's cache directory, ~/.cache/torchshim)",
        ),
        Variable(
            "TORCHSHIM_COMPILE_SIZES",
            "comma-separated batch sizes >= 1 and inclusive ranges lo-hi, e.g. 1,2,4,8,9-64",
            "served batch sizes, each compiled on its own, and compile ranges",
        ),
        Variable(
            "TORCHSHIM_CUDAGRAPHS",
            "auto, or a switch: 1/true/yes/on or 0/false/no/off",
            "CUDA graphs for the served sizes (auto: on for models on CUDA)",
        ),
        Variable(
            "TORCHSHIM_PAD_BATCH",
            "a switch: 1/true/yes/on or 0/false/no/off",
            "run a batch size between served sizes padded to the next served size",
        ),
        Variable(
            "TORCHSHIM_ADAPTOR",
            "one of " + ", ".join(ADAPTOR_NAMES),
            "which compiler the backend uses (auto: standalone where torch has it, else inductor)",
        ),
        Variable(
            "TORCHSHIM_COMPILER_CONFIG",
            'a JSON object of Inductor config options, e.g. {"max_autotune": false}',
            "Inductor config patches for every compile (part of the key)",
        ),
        Variable(
            "TORCHSHIM_RANK",
            "an integer >= 0",
            "this process's rank: one cache sub-directory (rank_<n>) per rank",
        ),
        Variable(
            "TORCHSHIM_LOCK_TIMEOUT",
            "a finite number of seconds >= 0, e.g. 600",
            "how long to wait for another process compiling the same graph before compiling "
            "uncached (default 600)",
        ),
        Variable(
            "TORCHSHIM_CACHE_SHARED",
            "a switch: 1/true/yes/on or 0/false/no/off",
            "the cache directory is shared on purpose by several users or containers",
        ),
        Variable(
            "TORCHSHIM_CACHE_KEY",
            "any non-empty secret text",
            "sign entries (HMAC-SHA256); entries that do not verify are misses",
        ),
        Variable(
            "TORCHSHIM_STRICT",
            "a switch: 1/true/yes/on or 0/false/no/off",
            "raise CacheCorruptionError on a bad entry instead of treating it as a miss",
        ),
        Variable(
            "TORCHSHIM_REMOTE",
            "a Redis URL, redis://host:port/db (rediss:// for TLS, unix:///path for a socket)",
            "the remote tier every host shares: local misses are looked up there, compiles are "
            "published there, one host compiles each graph (needs `pip install 'torchshim[fleet]'`)",
        ),
        Variable(
            "TORCHSHIM_REMOTE_TIMEOUT",
            "a number of seconds > 0, e.g. 2",
            "the remote tier's connect and command timeout (default 2); a dead or stalled server "
            "costs at most this, then the tier is skipped for a while",
        ),
        Variable(
            "TORCHSHIM_REMOTE_TTL",
            "a number of seconds >= 0 (0: none)",
            "expire remote entries this long after they were published (default: never; Redis's "
            "own eviction prunes)",
        ),
        Variable(
            "TORCHSHIM_REMOTE_LEASE",
            "a number of seconds > 0, e.g. 30",
            "the compile lease's expiry, renewed while the compile runs; a host that dies holding "
            "it is replaced after this long (default 30)",
        ),
        Variable(
            "TORCHSHIM_REMOTE_CHUNK",
            "a number of bytes >= 1024, e.g. 8388608",
            "files larger than this are stored in the remote tier in chunks of this size "
            "(default 8 MiB)",
        ),
        Variable(
            "TORCHSHIM_DIRECT_LOAD",
            "a switch: 1/true/yes/on or 0/false/no/off (default on)",
            "load planned CPU graphs by running their generated module with their kernels opened "
            "directly; off: always through torch's loader",
        ),
        Variable(
            "TORCHSHIM_ALLOW_UNTESTED",
            "a switch: 1/true/yes/on or 0/false/no/off",
            "use the newest shim on a torch newer than every supported series",
        ),
    )
}


def _raw(name: str) -> str:
    return os.environ.get(name, "")


def _error(name: str, value: str, problem: str = "") -> ConfigError:
    form = VARIABLES[name].form
    detail = f" ({problem})" if problem else ""
    return ConfigError(
        f"{name}={value!r} is not valid{detail}; it takes {form}. Fix or unset the variable."
    )


def parse_flag(name: str, text: str) -> bool:
    """A switch's value, the same spellings for every switch."""
    value = text.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise _error(name, text)


def parse_compile_sizes(
    text: str, name: str = "TORCHSHIM_COMPILE_SIZES"
) -> tuple[int | tuple[int, int], ...]:
    """``"1,2,4,8,9-64"`` -> ``(1, 2, 4, 8, (9, 64))``; an empty entry, a non-integer, a size
    < 1 or a range whose ends are out of order is an error (``1,,2`` is a typo, not "1 and 2");
    overlaps are checked by :class:`~torchshim.options.BackendOptions`."""
    stripped = text.strip()
    if not stripped:
        return ()
    entries: list[int | tuple[int, int]] = []
    for part in stripped.split(","):
        item = part.strip()
        if not item:
            raise _error(name, text, "an empty entry")
        ends = item.split("-") if "-" in item[1:] else [item]
        try:
            numbers = [int(end) for end in ends]
        except ValueError:
            raise _error(name, text, f"{item!r} is not a size or a range lo-hi") from None
        if len(numbers) > 2 or any(n < 1 for n in numbers):
            raise _error(name, text, f"{item!r} is not a size >= 1 or a range lo-hi of them")
        if len(numbers) == 2:
            if numbers[0] > numbers[1]:
                raise _error(name, text, f"the range {item!r} ends before it starts")
            entries.append((numbers[0], numbers[1]))
        else:
            entries.append(numbers[0])
    return tuple(entries)


def _parse_seconds(name: str, text: str, default: float, *, zero_ok: bool = True) -> float:
    stripped = text.strip()
    if not stripped:
        return default
    try:
        value = float(stripped)
    except ValueError:
        raise _error(name, text, "not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise _error(name, text, "it must be finite and >= 0" if zero_ok else "it must be > 0")
    return value


def parse_lock_timeout(text: str, name: str = "TORCHSHIM_LOCK_TIMEOUT") -> float:
    return _parse_seconds(name, text, DEFAULT_LOCK_TIMEOUT_S)


def cache_dir() -> Path | None:
    """``TORCHSHIM_CACHE_DIR`` (``~`` expanded), or ``None`` when unset or empty."""
    text = _raw("TORCHSHIM_CACHE_DIR").strip()
    if not text:
        return None
    if "\x00" in text:
        raise _error("TORCHSHIM_CACHE_DIR", text, "it contains a NUL character")
    return Path(text).expanduser()


def compile_sizes() -> tuple[int | tuple[int, int], ...]:
    return parse_compile_sizes(_raw("TORCHSHIM_COMPILE_SIZES"))


def cudagraphs() -> bool | None:
    """``TORCHSHIM_CUDAGRAPHS``: ``None`` (auto, the default), or a switch."""
    text = _raw("TORCHSHIM_CUDAGRAPHS")
    if text.strip().lower() in ("", "auto"):
        return None
    return parse_flag("TORCHSHIM_CUDAGRAPHS", text)


def pad_batch() -> bool:
    return parse_flag("TORCHSHIM_PAD_BATCH", _raw("TORCHSHIM_PAD_BATCH"))


def adaptor() -> AdaptorName:
    text = _raw("TORCHSHIM_ADAPTOR").strip() or "auto"
    if text not in ADAPTOR_NAMES:
        raise _error("TORCHSHIM_ADAPTOR", text)
    chosen: AdaptorName = text  # type: ignore[assignment]  # checked against the Literal above
    return chosen


def compiler_config() -> dict[str, Any]:
    text = _raw("TORCHSHIM_COMPILER_CONFIG")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _error("TORCHSHIM_COMPILER_CONFIG", text, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _error("TORCHSHIM_COMPILER_CONFIG", text, "not a JSON object")
    return value


def _int(name: str, low: int, high: int | None = None) -> int | None:
    """The integer variable ``name`` (``None`` when unset), checked against ``low .. high``."""
    text = _raw(name).strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise _error(name, text, "not an integer") from None
    if value < low:
        raise _error(name, text, "negative" if low == 0 else f"below {low}")
    if high is not None and value > high:
        raise _error(name, text, f"above {high}")
    return value


def rank() -> int | None:
    return _int("TORCHSHIM_RANK", 0)


def lock_timeout() -> float:
    return parse_lock_timeout(_raw("TORCHSHIM_LOCK_TIMEOUT"))


def cache_shared() -> bool:
    return parse_flag("TORCHSHIM_CACHE_SHARED", _raw("TORCHSHIM_CACHE_SHARED"))


def cache_key() -> bytes | None:
    value = _raw("TORCHSHIM_CACHE_KEY")
    return value.encode() if value else None


def strict() -> bool:
    return parse_flag("TORCHSHIM_STRICT", _raw("TORCHSHIM_STRICT"))


def direct_load() -> bool:
    raw = _raw("TORCHSHIM_DIRECT_LOAD")
    return True if raw.strip() == "" else parse_flag("TORCHSHIM_DIRECT_LOAD", raw)


def allow_untested() -> bool:
    return parse_flag("TORCHSHIM_ALLOW_UNTESTED", _raw("TORCHSHIM_ALLOW_UNTESTED"))


def parse_remote(text: str, name: str = "TORCHSHIM_REMOTE") -> str | None:
    """A remote tier's URL (``None``: no remote tier), checked for form only."""
    stripped = text.strip()
    if not stripped:
        return None
    scheme, sep, rest = stripped.partition("://")
    if not sep or scheme.lower() not in REMOTE_SCHEMES or not rest:
        raise _error(name, text, f"the scheme must be one of {', '.join(REMOTE_SCHEMES)}")
    return stripped


def remote() -> str | None:
    return parse_remote(_raw("TORCHSHIM_REMOTE"))


def _seconds(name: str, default: float, *, zero_ok: bool) -> float:
    return _parse_seconds(name, _raw(name), default, zero_ok=zero_ok)


def remote_timeout() -> float:
    return _seconds("TORCHSHIM_REMOTE_TIMEOUT", DEFAULT_REMOTE_TIMEOUT_S, zero_ok=False)


def remote_ttl() -> float | None:
    """Seconds a remote entry lives after it was published; ``None``: until Redis evicts it."""
    value = _seconds("TORCHSHIM_REMOTE_TTL", 0.0, zero_ok=True)
    return value or None


def remote_lease() -> float:
    return _seconds("TORCHSHIM_REMOTE_LEASE", DEFAULT_REMOTE_LEASE_S, zero_ok=False)


def remote_chunk() -> int:
    value = _int("TORCHSHIM_REMOTE_CHUNK", 1024, 256 << 20)
    return DEFAULT_REMOTE_CHUNK if value is None else value


def check_environment() -> None:
    """Validate every ``TORCHSHIM_*`` variable now (one :class:`ConfigError` for the first bad
    one). Unknown ``TORCHSHIM_*`` names are left alone: other tools (tests, CI) use the prefix."""
    cache_dir()
    compile_sizes()
    cudagraphs()
    pad_batch()
    adaptor()
    compiler_config()
    rank()
    lock_timeout()
    cache_shared()
    strict()
    direct_load()
    allow_untested()
    remote()
    remote_timeout()
    remote_ttl()
    remote_lease()
    remote_chunk()
