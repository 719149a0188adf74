"""The backend's settings, one frozen object validated once.

``torchshim.compile``, ``torchshim.backend`` and ``Backend`` all take these settings as keywords
(or one :class:`BackendOptions`), and ``torch.compile(model, backend="torchshim")`` reads them from
the environment (:meth:`BackendOptions.from_environment`, see :mod:`torchshim.config`). A bad value
is a :class:`~torchshim.errors.ConfigError` that names it, raised before Dynamo traces anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchshim import config
from torchshim.config import ADAPTOR_NAMES, AdaptorName
from torchshim.errors import ConfigError

__all__ = ["BackendOptions", "options_from"]


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """What a torchshim backend does.

    ``cache_dir``: the cache (default ``TORCHSHIM_CACHE_DIR``, else the user's cache directory);
    one sub-directory per ``rank``. ``compile_sizes``: batch sizes that get a graph of their own,
    compiled (or loaded) up front; any other size runs the general graph. ``adaptor``: one of
    ``auto``, ``inductor``, ``inductor_standalone``, ``eager``. ``compiler_config``: Inductor
    config patches (part of the key). ``lock_timeout``: seconds to wait for another process
    compiling the same graph before compiling without the cache (default
    ``TORCHSHIM_LOCK_TIMEOUT``, 600). ``batch_dim``: for ``torchshim.compile``, the dimension of
    every tensor argument that is the batch (marked dynamic on the first call; ``None`` leaves
    dynamism to Dynamo).
    """

    cache_dir: Path | None = None
    compile_sizes: tuple[int, ...] = ()
    adaptor: AdaptorName = "auto"
    compiler_config: Mapping[str, Any] = field(default_factory=dict)
    rank: int | None = None
    lock_timeout: float | None = None
    batch_dim: int | None = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)):
                raise ConfigError(
                    f"cache_dir must be a path, got {type(self.cache_dir).__name__} "
                    f"{self.cache_dir!r}"
                )
            set_(self, "cache_dir", Path(self.cache_dir).expanduser())
        sizes: object = self.compile_sizes  # any iterable at run time
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
            raise ConfigError(
                f"compile_sizes must be a list of batch sizes such as [1, 2, 4, 8], got {sizes!r}"
            )
        listed = list(sizes)
        for size in listed:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(
                    f"compile_sizes must be batch sizes >= 1, got {size!r} in {listed!r}"
                )
        set_(self, "compile_sizes", tuple(sorted(set(listed))))
        if self.adaptor not in ADAPTOR_NAMES:
            from torchshim.errors import UnknownAdaptorError

            raise UnknownAdaptorError(
                f"unknown adaptor {self.adaptor!r}; choose one of {', '.join(ADAPTOR_NAMES)}"
            )
        if not isinstance(self.compiler_config, Mapping):
            raise ConfigError(
                "compiler_config must be a dict of Inductor options such as "
                f'{{"max_autotune": False}}, got {self.compiler_config!r}'
            )
        set_(self, "compiler_config", dict(self.compiler_config))
        if self.rank is not None and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0
        ):
            raise ConfigError(f"rank must be None or an int >= 0, got {self.rank!r}")
        timeout = self.lock_timeout
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise ConfigError(f"lock_timeout must be finite seconds >= 0, got {timeout!r}")
        if self.batch_dim is not None and (
            isinstance(self.batch_dim, bool) or not isinstance(self.batch_dim, int)
        ):
            raise ConfigError(f"batch_dim must be None or an int, got {self.batch_dim!r}")

    @classmethod
    def from_environment(cls) -> BackendOptions:
        """The options ``backend="torchshim"`` uses: ``TORCHSHIM_CACHE_DIR``,
        ``TORCHSHIM_COMPILE_SIZES``, ``TORCHSHIM_ADAPTOR``, ``TORCHSHIM_COMPILER_CONFIG``,
        ``TORCHSHIM_RANK``, ``TORCHSHIM_LOCK_TIMEOUT``."""
        return cls(
            cache_dir=config.cache_dir(),
            compile_sizes=config.compile_sizes(),
            adaptor=config.adaptor(),
            compiler_config=config.compiler_config(),
            rank=config.rank(),
            lock_timeout=config.lock_timeout(),
        )

    def effective_lock_timeout(self) -> float:
        return config.lock_timeout() if self.lock_timeout is None else float(self.lock_timeout)

    def replace(self, **changes: Any) -> BackendOptions:
        return options_from(self, changes)


_NAMES = tuple(f.name for f in dataclasses.fields(BackendOptions))


def options_from(
    first: str | os.PathLike[str] | BackendOptions | None, settings: Mapping[str, Any]
) -> BackendOptions:
    """Options from what a caller passed: one :class:`BackendOptions` (with keyword changes), or
    a cache directory and keywords. An unknown keyword is a :class:`ConfigError` that lists the
    known ones."""
    unknown = sorted(set(settings) - set(_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown backend setting(s) {', '.join(unknown)}; known: {', '.join(_NAMES)}"
        )
    if isinstance(first, BackendOptions):
        return dataclasses.replace(first, **settings) if settings else first
    if first is not None:
        if "cache_dir" in settings:
            raise ConfigError("cache_dir given twice (positionally and as a keyword)")
        return BackendOptions(cache_dir=Path(first), **settings)
    return BackendOptions(**settings)
