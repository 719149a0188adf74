"""The version oracle: the only place in torchshim that reads ``torch.__version__``.

Policy. A torch build belongs to series ``major.minor`` of its release segment, whatever else the
version string carries: a nightly (``2.10.0.dev20250901+cu128``), an alpha or source build
(``2.10.0a0+gitabc``), a release candidate (``2.10.0rc1``), a vendor build
(``2.6.0a0+abc.nv25.01``) or a local label (``2.13.0+cpu``) of 2.N is series 2.N, because it
carries 2.N's private hooks. Versions are compared as parsed integer tuples, never as strings
(``"2.10.0" >= "2.6"`` is False).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from torchshim.errors import TorchVersionParseError

__all__ = [
    "TorchSeries",
    "cuda_build",
    "installed_torch_version",
    "parse_series",
    "torch_git_version",
    "torch_series",
]


@dataclass(frozen=True, order=True)
class TorchSeries:
    """A torch release series such as 2.10: immutable, hashable, ordered numerically."""

    major: int
    minor: int

    def __post_init__(self) -> None:
        if self.major < 0 or self.minor < 0:
            raise TorchVersionParseError(
                f"a torch series needs non-negative numbers, got ({self.major}, {self.minor})"
            )

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def module_suffix(self) -> str:
        """The zero-padded name used by shim modules, e.g. ``2_05`` for 2.5, ``2_10`` for 2.10."""
        return f"{self.major}_{self.minor:02d}"


def parse_series(version: str) -> TorchSeries:
    """Return the series of a torch version string (see the module docstring for the policy).

    Raises :class:`torchshim.errors.TorchVersionParseError` for anything that is not a
    PEP 440 version with at least a major and a minor number.
    """
    if not isinstance(version, str):
        raise TorchVersionParseError(
            f"expected a version string such as '2.10.0', got {type(version).__name__}: {version!r}"
        )
    text = str(version).strip()
    try:
        parsed = Version(text)
    except InvalidVersion as exc:
        raise TorchVersionParseError(
            f"cannot parse torch version {version!r}: it is not a PEP 440 version. "
            "Check `python -c 'import torch; print(torch.__version__)'`; a torch build must report "
            "a version such as '2.10.0' or '2.10.0.dev20250901+cu128'."
        ) from exc
    if len(parsed.release) < 2:
        raise TorchVersionParseError(
            f"torch version {version!r} has no minor number; torchshim needs at least 'MAJOR.MINOR'"
        )
    return TorchSeries(parsed.release[0], parsed.release[1])


@functools.cache
def installed_torch_version() -> str:
    """The installed torch's version string, as torch reports it (for messages only)."""
    import torch

    return str(torch.__version__)


@functools.cache
def torch_git_version() -> str:
    """The commit the installed torch was built from (``""`` where the build does not say): with
    the version, what tells two builds apart in records keyed by the torch build."""
    import torch

    return str(getattr(torch.version, "git_version", "") or "")


@functools.cache
def cuda_build() -> str | None:
    """The CUDA version the installed torch was built for, ``None`` for a CPU-only build (for
    messages only)."""
    import torch

    version = torch.version.cuda
    return None if version is None else str(version)


@functools.cache
def torch_series() -> TorchSeries:
    """The series of the installed torch, parsed once per process."""
    return parse_series(installed_torch_version())
