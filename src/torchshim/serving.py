"""Serving: route each call to the artifact of its batch size, range, padded size or the general
graph, replay CUDA graphs for served sizes, and count what happened.

A graph's *variants* are its compiled artifacts: the general one (symbolic batch), one per served
size and one per compile range. The dispatcher reads the batch from the call (a tensor dimension
or an int input) and picks, in order: the exact size; a range that contains it; with
``pad_batch``, the next larger served size, on inputs padded with zeros along the batch and
outputs cut back; else the general graph.

CUDA graphs. A served size's variant is captured once per process into one memory pool shared by
every size of the backend (largest first, so the smaller ones reuse its memory), then replayed:
the call's inputs are copied into static buffers, parameters and buffers are used in place. A
replay's outputs live in the graph's memory, which the next replay overwrites, so the dispatcher
returns copies: a caller may keep any output for as long as it likes (torch's ``reduce-overhead``
instead raises when an overwritten output is read; one device-to-device copy per output is the
price here). A variant that cannot be captured (inputs on the CPU, a graph that mutates its
inputs, a capture that fails) runs uncaptured, with one log line saying why.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchshim.adaptors.handles import RuntimeShape, shape_label
from torchshim.shims import active

__all__ = [
    "BatchLayout",
    "GraphedVariant",
    "ServingStats",
    "input_spec",
    "make_dispatcher",
    "static_batch",
]

log = logging.getLogger(__name__)


@dataclass
class ServingStats:
    """What the dispatchers of one backend served in this process."""

    #: calls per variant: "size 4", "range 9-64", "padded 3->4", "general"
    calls: Counter[str] = field(default_factory=Counter)
    #: captured CUDA graphs: label -> bytes of memory the capture reserved
    captured: dict[str, int] = field(default_factory=dict)
    #: variants that run uncaptured: label -> why
    uncaptured: dict[str, str] = field(default_factory=dict)
    #: seconds spent capturing (warm-up runs and capture), after each artifact's first run
    capture_seconds: float = 0.0
    #: seconds of the captured artifacts' first runs (loading kernels lazily; not capture)
    first_run_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": dict(sorted(self.calls.items())),
            "captured": dict(self.captured),
            "captured_bytes": sum(self.captured.values()),
            "uncaptured": dict(self.uncaptured),
            "capture_seconds": round(self.capture_seconds, 4),
            "first_run_seconds": round(self.first_run_seconds, 4),
        }


@dataclass(frozen=True)
class BatchLayout:
    """Where a graph's batch is: ``position`` (read at call time), every input dimension and
    every output dimension that is the batch (for padding), the inputs that are parameters or
    buffers (used in place by a CUDA graph), and why the graph cannot be captured, if so."""

    position: tuple[int, int | None] | None
    input_dims: tuple[tuple[int, int], ...] = ()
    output_dims: tuple[tuple[int, int], ...] = ()
    static_inputs: frozenset[int] = frozenset()
    not_capturable: str | None = None


class GraphedVariant:
    """A variant replayed from a CUDA graph, captured at its first call (or by :meth:`capture`
    with zero-filled inputs of its size)."""

    def __init__(
        self,
        label: str,
        fn: Callable[..., Any],
        layout: BatchLayout,
        pool: Any,
        stats: ServingStats,
        *,
        size: int | None = None,
        spec: Sequence[Any] = (),
    ) -> None:
        self.label, self.fn, self.layout, self.pool, self.stats = label, fn, layout, pool, stats
        self.size = size
        self._spec = list(spec)
        self._row_dims = dict(layout.input_dims)
        self._lock = threading.Lock()
        self._graph: Any = None
        self._outputs: Any = None
        self._refs: list[tuple[int, Any]] = []
        self._buffers: list[tuple[int, Any]] = []
        self._values: list[tuple[int, Any]] = []
        self._failed = False

    def _give_up(self, why: str) -> None:
        self._failed = True
        self.stats.uncaptured[self.label] = why
        log.warning("torchshim: %s runs without a CUDA graph: %s", self.label, why)

    def capture(self, args: Sequence[Any]) -> bool:
        """Capture the variant with ``args`` as the static inputs' first values."""
        import torch

        with self._lock:
            if self._graph is not None or self._failed:
                return self._graph is not None
            static: list[Any] = []
            for index, value in enumerate(args):
                if isinstance(value, torch.Tensor) and index not in self.layout.static_inputs:
                    buffer = torch.empty_strided(
                        value.shape, value.stride(), dtype=value.dtype, device=value.device
                    )
                    buffer.copy_(value)
                    static.append(buffer)
                else:
                    static.append(value)
            shim = active().module
            try:
                started = time.perf_counter()
                self.fn(*static)  # the loaded artifact's first run (lazy kernel loading)
                torch.cuda.synchronize()
                self.stats.first_run_seconds += time.perf_counter() - started
                started = time.perf_counter()
                before = torch.cuda.memory_reserved()
                graph, outputs = shim.capture_cuda_graph(self.fn, static, self.pool)
            except Exception as exc:  # a capture error: serve uncaptured, say why once
                self._give_up(f"capture failed: {type(exc).__name__}: {exc}"[:300])
                return False
            self.stats.capture_seconds += time.perf_counter() - started
            self.stats.captured[self.label] = max(0, torch.cuda.memory_reserved() - before)
            self._graph, self._outputs = graph, outputs
            self._refs = [(i, v) for i, v in enumerate(static) if i in self.layout.static_inputs]
            self._buffers = [
                (i, v)
                for i, v in enumerate(static)
                if isinstance(v, torch.Tensor) and i not in self.layout.static_inputs
            ]
            self._values = [(i, v) for i, v in enumerate(static) if not isinstance(v, torch.Tensor)]
            return True

    def synthetic_args(self) -> list[Any] | None:
        """Zero-filled inputs of this variant's size (``None`` when they cannot be made)."""
        import torch

        if not self._spec:
            return None
        args: list[Any] = []
        for item in self._spec:
            if item[0] == "zeros":
                args.append(torch.zeros(item[1], dtype=item[2], device=item[3]))
            else:
                args.append(item[1])
        return args

    def __call__(self, *args: Any) -> Any:
        import torch

        if self._graph is None:
            if self._failed or torch.cuda.is_current_stream_capturing():
                return self.fn(*args)
            if not self.capture(args):
                return self.fn(*args)
        if torch.cuda.is_current_stream_capturing():
            return self.fn(*args)  # an engine capturing us: run the artifact as is
        # another shape, other weights or another int input than captured: run it as is
        for index, ref in self._refs:
            value = args[index]
            if value is not ref and value.data_ptr() != ref.data_ptr():
                return self.fn(*args)
        for index, constant in self._values:
            if args[index] != constant:
                return self.fn(*args)
        for index, buffer in self._buffers:
            if args[index].shape != buffer.shape:
                return self.fn(*args)
        for index, buffer in self._buffers:
            buffer.copy_(args[index])
        self._graph.replay()
        return _copy_out(self._outputs)

    def padded(self, args: Sequence[Any], batch: int) -> Any:
        """Serve a smaller ``batch`` with this (larger) size's graph: the call's rows are copied
        into the first rows of the static buffers, the graph replays, and only the call's rows
        of the outputs are copied out. The rows past ``batch`` keep what the buffers held: by
        the padding contract rows are independent, so they do not change the call's rows.
        ``None`` when the call does not fit the captured graph (the caller pads and runs it)."""
        import torch

        if self._graph is None or torch.cuda.is_current_stream_capturing():
            return None
        for index, ref in self._refs:
            value = args[index]
            if value is not ref and value.data_ptr() != ref.data_ptr():
                return None
        position = self.layout.position
        batch_input = position[0] if position is not None and position[1] is None else None
        for index, constant in self._values:
            if index != batch_input and args[index] != constant:
                return None
        rows = self._row_dims
        for index, buffer in self._buffers:
            value = args[index]
            dim = rows.get(index)
            expected = list(buffer.shape)
            if dim is not None:
                expected[dim] = batch
            if list(value.shape) != expected:
                return None
        for index, buffer in self._buffers:
            dim = rows.get(index)
            (buffer if dim is None else buffer.narrow(dim, 0, batch)).copy_(args[index])
        self._graph.replay()
        return _copy_out(_cut(self._outputs, self.layout, batch, self.size or batch))


def _copy_out(outputs: Any) -> Any:
    import torch

    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(o.clone() if isinstance(o, torch.Tensor) else o for o in outputs)
    return outputs


def _pad(args: Sequence[Any], layout: BatchLayout, batch: int, target: int) -> list[Any]:
    import torch

    padded = list(args)
    if layout.position is not None and layout.position[1] is None:
        padded[layout.position[0]] = target  # the batch is an int input too
    for index, dim in layout.input_dims:
        value = padded[index]
        if isinstance(value, torch.Tensor) and value.dim() > dim and value.shape[dim] == batch:
            shape = list(value.shape)
            shape[dim] = target - batch
            padded[index] = torch.cat([value, value.new_zeros(shape)], dim)
    return padded


def _cut(outputs: Any, layout: BatchLayout, batch: int, target: int) -> Any:
    import torch

    single = not isinstance(outputs, (list, tuple))
    items = [outputs] if single else list(outputs)
    for index, dim in layout.output_dims:
        if index < len(items):
            value = items[index]
            if isinstance(value, torch.Tensor) and value.dim() > dim and value.shape[dim] == target:
                items[index] = value.narrow(dim, 0, batch)
    if single:
        return items[0]
    return type(outputs)(items)


def static_batch(
    example_inputs: Sequence[Any], batch_dim: int | None, static: frozenset[int] = frozenset()
) -> int | None:
    """The batch of a graph traced with static sizes: the first tensor input's ``batch_dim``,
    parameters and buffers (``static``, Dynamo lifts them to the first inputs) skipped."""
    import torch

    dim = 0 if batch_dim is None else batch_dim
    for index, value in enumerate(example_inputs):
        if index in static:
            continue
        if isinstance(value, torch.Tensor) and value.dim() > dim:
            return int(value.shape[dim])
    return None


def input_spec(example_inputs: Sequence[Any], layout: BatchLayout, size: int | None) -> list[Any]:
    """How to make a call of batch ``size`` from the example inputs (for capturing up front):
    parameters and buffers as they are, other tensors as zeros of their shape with the batch
    dimensions set to ``size``, the batch itself where it is an int input."""
    import torch

    batch_dims_of: dict[int, list[int]] = {}
    for index, dim in layout.input_dims:
        batch_dims_of.setdefault(index, []).append(dim)
    spec: list[Any] = []
    for index, value in enumerate(example_inputs):
        if isinstance(value, torch.Tensor) and index in layout.static_inputs:
            spec.append(("static", value))
        elif isinstance(value, torch.Tensor):
            shape = [int(n) for n in value.shape]
            for dim in batch_dims_of.get(index, []):
                if size is not None:
                    shape[dim] = size
            spec.append(("zeros", tuple(shape), value.dtype, value.device))
        elif layout.position == (index, None) and size is not None:
            spec.append(("value", size))
        else:
            spec.append(("value", value))
    return spec


def make_dispatcher(
    variants: dict[RuntimeShape, Callable[..., Any]],
    layout: BatchLayout,
    stats: ServingStats,
    *,
    pad_batch: bool = False,
) -> Callable[..., Any]:
    """A callable that runs the variant for each call's batch (see the module's docstring)."""
    general = variants[None]
    sized = {s: fn for s, fn in variants.items() if isinstance(s, int)}
    ranges = sorted((s[0], s[1], fn) for s, fn in variants.items() if isinstance(s, tuple))
    calls = stats.calls
    if layout.position is None or (not sized and not ranges):

        def only(*args: Any) -> Any:
            calls["general"] += 1
            return general(*args)

        return only
    index, dim = layout.position
    sizes = sorted(sized)
    size_labels = {s: shape_label(s) for s in sizes}
    range_labels = [shape_label((lo, hi)) for lo, hi, _ in ranges]
    can_pad = pad_batch and bool(layout.input_dims)
    if pad_batch and not can_pad:
        log.warning(
            "torchshim: pad_batch=True, but this graph's batch is in no input tensor torchshim "
            "can pad (the graph carries no shape metadata): its calls are not padded"
        )

    def dispatch(*args: Any) -> Any:
        value = args[index]
        batch = value if dim is None else value.shape[dim]
        fn = sized.get(batch)
        if fn is not None:
            calls[size_labels[batch]] += 1
            return fn(*args)
        for number, (lo, hi, ranged) in enumerate(ranges):
            if lo <= batch <= hi:
                calls[range_labels[number]] += 1
                return ranged(*args)
        if can_pad:
            at = bisect.bisect_right(sizes, batch)
            if at < len(sizes):
                target = sizes[at]
                calls[f"padded {batch}->{target}"] += 1
                variant = sized[target]
                if isinstance(variant, GraphedVariant):
                    out = variant.padded(args, batch)
                    if out is not None:
                        return out
                out = variant(*_pad(args, layout, batch, target))
                return _cut(out, layout, batch, target)
        calls["general"] += 1
        return general(*args)

    return dispatch
