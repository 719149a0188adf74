"""torchshim: a stable facade over PyTorch's private compile-cache hooks, torch 2.5 to 2.15.

The public names are re-exported here; see the README for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchshim._version import TorchSeries, parse_series, torch_series
from torchshim.errors import (
    AdaptorConfigError,
    ArtifactMissingError,
    ArtifactUnreadableError,
    CacheDirError,
    CapabilityUnavailable,
    ForeignHandleError,
    HandleFormatError,
    LoadError,
    PatchTargetMissing,
    TorchShimError,
    TorchVersionParseError,
    UnknownAdaptorError,
    UnsupportedGraphError,
    UnsupportedTorchVersion,
)
from torchshim.shims import SUPPORTED_SERIES, UntestedTorchWarning, capabilities

if TYPE_CHECKING:
    from torchshim.adaptors import CompilerInterface
    from torchshim.doctor import HookReport

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_SERIES",
    "AdaptorConfigError",
    "ArtifactMissingError",
    "ArtifactUnreadableError",
    "CacheDirError",
    "CapabilityUnavailable",
    "ForeignHandleError",
    "HandleFormatError",
    "LoadError",
    "PatchTargetMissing",
    "TorchSeries",
    "TorchShimError",
    "TorchVersionParseError",
    "UnknownAdaptorError",
    "UnsupportedGraphError",
    "UnsupportedTorchVersion",
    "UntestedTorchWarning",
    "capabilities",
    "hook_report",
    "make_adaptor",
    "parse_series",
    "torch_series",
]


def hook_report() -> HookReport:
    """Check the installed torch's private hooks against the inventory (see ``torchshim doctor``)."""
    from torchshim.doctor import hook_report as _hook_report

    return _hook_report()


def make_adaptor(name: str, **kwargs: Any) -> CompilerInterface:
    """Create an adaptor: ``"eager"``, ``"inductor"``, ``"inductor_standalone"`` or ``"auto"``."""
    from torchshim.adaptors import make_adaptor as _make_adaptor

    return _make_adaptor(name, **kwargs)
