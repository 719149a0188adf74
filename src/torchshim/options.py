"""The backend's settings, one frozen object validated once.

``torchshim.compile``, ``torchshim.backend`` and ``Backend`` all take these settings as keywords
(or one :class:`BackendOptions`), and ``torch.compile(model, backend="torchshim")`` reads them from
the environment (:meth:`BackendOptions.from_environment`, see :mod:`torchshim.config`). A bad value
is a :class:`~torchshim.errors.ConfigError` that names it, raised before Dynamo traces anything.
"""

from __future__ import annotations

import dataclasses
import itertools
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
    dynamism to Dynamo). ``remote``: the remote tier every host shares, ``redis://host:port/db``
    (default ``TORCHSHIM_REMOTE``; ``""``: none): local misses are looked up there, compiles are
    published there, and one host compiles each graph while the others wait and load it.

    ``compile_sizes`` may hold compile ranges beside sizes: ``[1, 2, 4, 8, (9, 64)]`` compiles one
    graph with the batch bounded to 9..64 (inclusive), served to every batch in it. Entries must
    not overlap. ``cudagraphs``: CUDA graphs for the served sizes (``None``: on when the graph's
    inputs are on CUDA; ``True`` on a CPU graph is a :class:`ConfigError`). ``pad_batch``: a batch
    between served sizes runs the next larger size's graph on inputs padded with zeros along the
    batch, its outputs cut back; only right for models whose rows are independent (not batch
    norm in training, not attention or pooling across the batch). ``save_trace``: for
    ``torchshim.compile`` on torch 2.10+, save Dynamo's output beside the graphs so that a warm
    process runs it instead of tracing the model (see :mod:`torchshim.warm`).
    """

    cache_dir: Path | None = None
    compile_sizes: tuple[int | tuple[int, int], ...] = ()
    adaptor: AdaptorName = "auto"
    compiler_config: Mapping[str, Any] = field(default_factory=dict)
    rank: int | None = None
    lock_timeout: float | None = None
    batch_dim: int | None = 0
    cudagraphs: bool | None = None
    pad_batch: bool = False
    save_trace: bool = True
    remote: str | None = None

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
        set_(self, "compile_sizes", _check_sizes(list(sizes)))
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
        for name in ("cudagraphs", "pad_batch", "save_trace"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (name == "cudagraphs" and value is None)):
                allowed = "None, True or False" if name == "cudagraphs" else "True or False"
                raise ConfigError(f"{name} must be {allowed}, got {value!r}")
        if self.remote is not None:
            if not isinstance(self.remote, str):
                raise ConfigError(f"remote must be a redis:// URL or None, got {self.remote!r}")
            if self.remote.strip():
                try:
                    config.parse_remote(self.remote)
                except ConfigError:
                    raise ConfigError(
                        f"remote must be a URL redis://host:port/db (rediss:// for TLS, "
                        f"unix:///path for a socket), or '' for none; got {self.remote!r}"
                    ) from None
        if self.batch_dim is not None and (
            isinstance(self.batch_dim, bool) or not isinstance(self.batch_dim, int)
        ):
            raise ConfigError(f"batch_dim must be None or an int, got {self.batch_dim!r}")

    @classmethod
    def from_environment(cls) -> BackendOptions:
        """The options ``backend="torchshim"`` uses: ``TORCHSHIM_CACHE_DIR``,
        ``TORCHSHIM_COMPILE_SIZES``, ``TORCHSHIM_ADAPTOR``, ``TORCHSHIM_COMPILER_CONFIG``,
        ``TORCHSHIM_RANK``, ``TORCHSHIM_LOCK_TIMEOUT``, ``TORCHSHIM_REMOTE``."""
        return cls(
            cache_dir=config.cache_dir(),
            compile_sizes=config.compile_sizes(),
            adaptor=config.adaptor(),
            compiler_config=config.compiler_config(),
            rank=config.rank(),
            lock_timeout=config.lock_timeout(),
            cudagraphs=config.cudagraphs(),
            pad_batch=config.pad_batch(),
            remote=config.remote(),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        """The served batch sizes (no ranges)."""
        return tuple(s for s in self.compile_sizes if isinstance(s, int))

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(s for s in self.compile_sizes if isinstance(s, tuple))

    def effective_lock_timeout(self) -> float:
        return config.lock_timeout() if self.lock_timeout is None else float(self.lock_timeout)

    def replace(self, **changes: Any) -> BackendOptions:
        return options_from(self, changes)


_NAMES = tuple(f.name for f in dataclasses.fields(BackendOptions))


def _check_sizes(listed: list[Any]) -> tuple[int | tuple[int, int], ...]:
    """Sizes and ``(lo, hi)`` ranges, sorted and checked: sizes >= 1, ``1 <= lo <= hi``, no two
    entries overlapping (a size inside a range, or two ranges sharing a size)."""
    sizes: set[int] = set()
    ranges: set[tuple[int, int]] = set()
    for entry in listed:
        if isinstance(entry, bool):
            raise ConfigError(
                f"compile_sizes must be batch sizes >= 1, got {entry!r} in {listed!r}"
            )
        if isinstance(entry, int):
            if entry < 1:
                raise ConfigError(
                    f"compile_sizes must be batch sizes >= 1, got {entry!r} in {listed!r}"
                )
            sizes.add(entry)
            continue
        if (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
            and 1 <= entry[0] <= entry[1]
        ):
            ranges.add((int(entry[0]), int(entry[1])))
            continue
        raise ConfigError(
            f"compile_sizes takes batch sizes >= 1 and ranges (lo, hi) with 1 <= lo <= hi, got "
            f"{entry!r} in {listed!r}"
        )
    ordered = sorted(ranges)
    for (lo, hi), (next_lo, next_hi) in itertools.pairwise(ordered):
        if next_lo <= hi:
            raise ConfigError(
                f"compile_sizes: the ranges ({lo}, {hi}) and ({next_lo}, {next_hi}) overlap; "
                "give each batch size to one entry"
            )
    for size in sorted(sizes):
        for lo, hi in ordered:
            if lo <= size <= hi:
                raise ConfigError(
                    f"compile_sizes: the size {size} is inside the range ({lo}, {hi}); give "
                    "each batch size to one entry"
                )
    entries: list[int | tuple[int, int]] = [*sorted(sizes), *ordered]
    return tuple(entries)


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
