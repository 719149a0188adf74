"""Every error torchshim raises. Messages say what was wrong, what was found, what is supported and
what to do."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AdaptorConfigError",
    "ArtifactMissingError",
    "ArtifactUnreadableError",
    "BundleError",
    "CacheCorruptionError",
    "CacheDirError",
    "CacheLockTimeout",
    "CapabilityUnavailable",
    "ConfigError",
    "DemoError",
    "ForeignHandleError",
    "HandleFormatError",
    "LoadError",
    "PatchTargetMissing",
    "RemoteTierError",
    "TorchShimError",
    "TorchVersionParseError",
    "UnknownAdaptorError",
    "UnsupportedGraphError",
    "UnsupportedTorchVersion",
    "own_error",
]


class TorchShimError(Exception):
    """Base class of every error torchshim raises on purpose."""


class TorchVersionParseError(TorchShimError, ValueError):
    """A torch version string could not be turned into a series."""


class UnsupportedTorchVersion(TorchShimError, RuntimeError):
    """The installed torch belongs to a series torchshim has no shim for."""

    def __init__(self, found: str, series: str, supported: Iterable[str]) -> None:
        series_list = list(supported)
        listed = ", ".join(series_list)
        oldest, newest = (series_list[0], series_list[-1]) if series_list else ("2.5", "2.15")
        major, _, minor = newest.partition(".")
        bound = f"{major}.{int(minor) + 1}" if minor.isdigit() else newest
        super().__init__(
            f"torch {found} (series {series}) is not supported by this torchshim; supported series: "
            f"{listed}. Install a supported torch (e.g. `pip install 'torch>={oldest},<{bound}'`), or upgrade "
            "torchshim. To try the newest shim on a newer, untested torch anyway, set "
            "TORCHSHIM_ALLOW_UNTESTED=1 (older series are never allowed)."
        )
        self.found = found
        self.series = series


class CapabilityUnavailable(TorchShimError, RuntimeError):
    """A capability was asked for explicitly but the installed torch does not provide it."""

    def __init__(
        self, capability: str, found: str, providing: Iterable[str], hint: str = ""
    ) -> None:
        series = ", ".join(providing) or "no supported series"
        msg = (
            f"'{capability}' is not available with torch {found}; it is provided by torch series "
            f"{series}."
        )
        if hint:
            msg += " " + hint
        super().__init__(msg)
        self.capability = capability


class PatchTargetMissing(TorchShimError, AttributeError):
    """A scoped patch was asked to replace an attribute that does not exist (the hook moved)."""


class ConfigError(TorchShimError, ValueError):
    """A setting (a ``TORCHSHIM_*`` variable, a backend option, a compiler config) is invalid; the
    message names it, what it holds and the accepted form."""


class UnknownAdaptorError(TorchShimError, ValueError):
    """make_adaptor() was given a name it does not know."""


class AdaptorConfigError(TorchShimError, ValueError):
    """An adaptor was used wrongly (e.g. compile before initialize_cache, bad arguments)."""


class CacheDirError(TorchShimError, OSError):
    """A cache directory cannot be used (not a directory, not writable, ...)."""


class CacheCorruptionError(TorchShimError, RuntimeError):
    """A cache entry failed verification and TORCHSHIM_STRICT=1 asks for an error, not a miss."""


class CacheLockTimeout(TorchShimError, TimeoutError):
    """Another process held a cache entry's lock for longer than the timeout."""


class RemoteTierError(TorchShimError, OSError):
    """The remote tier could not answer (unreachable, too slow, full, or skipped for a while
    after such a failure). The store treats it as a remote miss; nothing fails because of it."""


class BundleError(TorchShimError, ValueError):
    """A cache bundle cannot be read or imported (damaged, tampered with, holding links or paths
    outside itself); nothing of it was published."""


class UnsupportedGraphError(TorchShimError, ValueError):
    """A graph has a form an adaptor cannot compile or persist faithfully."""


class LoadError(TorchShimError):
    """A handle cannot be honoured. Callers treat every LoadError as a cache miss and recompile."""


class HandleFormatError(LoadError, ValueError):
    """A handle's serialised form is malformed."""


class ForeignHandleError(LoadError):
    """A handle was written by another adaptor, torch build or cache format version."""


class ArtifactMissingError(LoadError, FileNotFoundError):
    """The artifact a handle points at is not in the cache (deleted, pruned or never copied)."""


class ArtifactUnreadableError(LoadError):
    """The artifact exists but cannot be read or loaded (truncated, corrupt, unreadable)."""


class DemoError(TorchShimError, RuntimeError):
    """``torchshim demo`` cannot run or did not finish: an unusable option (device, cache
    directory, output file) found before any worker starts, or a worker that failed (the message
    carries the worker's exception type and message)."""


def own_error(exc: BaseException) -> TorchShimError | None:
    """torchshim's own error inside the wrappers around it (Dynamo's ``BackendCompilerFailed``
    keeps a backend's exception as ``inner_exception`` and ``__cause__``), or ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TorchShimError):
            return current
        seen.add(id(current))
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return None
