"""torchshim: a stable facade over PyTorch's private compile-cache hooks, torch 2.5 to 2.15.

The public names are re-exported here; see the README for the CLI.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
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
    "capture_config",
    "hook_report",
    "make_adaptor",
    "parse_series",
    "torch_series",
]


def capture_config() -> AbstractContextManager[None]:
    """Dynamo settings under which every process traces a model to the same graphs.

    Use it around the first call of a ``torch.compile``-d model whose backend calls the adaptors
    (torchshim's backend does this itself). By default Dynamo traces Python floats symbolically and
    Inductor, while compiling, may ask it to re-trace with them specialised; a process that loads
    instead of compiling never gets that request and sees a different graph, so its cache look-ups
    miss. Inside this block floats are specialised up front (``specialize_float=True``).
    """
    from torchshim.shims import active

    return active().module.capture_config()


def hook_report() -> HookReport:
    """Check the installed torch's private hooks against the inventory (see ``torchshim doctor``)."""
    from torchshim.doctor import hook_report as _hook_report

    return _hook_report()


def make_adaptor(name: str, **kwargs: Any) -> CompilerInterface:
    """Create an adaptor: ``"eager"``, ``"inductor"``, ``"inductor_standalone"`` or ``"auto"``."""
    from torchshim.adaptors import make_adaptor as _make_adaptor

    return _make_adaptor(name, **kwargs)
