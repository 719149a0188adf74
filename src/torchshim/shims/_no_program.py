"""The saved-trace surface on series without it (torch 2.5 - 2.9): every function raises
:class:`~torchshim.errors.CapabilityUnavailable` (callers ask for ``supports_dynamo_program``
first)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _no_program() -> Any:
    from torchshim.errors import CapabilityUnavailable
    from torchshim.shims import series_providing

    providing = [str(s) for s in series_providing("supports_dynamo_program")]
    raise CapabilityUnavailable("supports_dynamo_program", "this series", providing)


def capture_program(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], backend: Any
) -> Any:
    return _no_program()


def save_program(program: Any) -> bytes:
    return bytes(_no_program())


def load_program(data: bytes, f_globals: dict[str, Any], restore: Callable[[bytes], Any]) -> Any:
    return _no_program()


def saved_graph(fn: Callable[..., Any], payload: bytes) -> Any:
    return _no_program()


def program_guard(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    return bool(_no_program())


def program_why_not(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    return str(_no_program())


def program_call(program: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    return _no_program()


def program_modules(program: Any) -> list[str]:
    return list(_no_program())


def graph_to_bytes(graph: Any) -> bytes:
    return bytes(_no_program())


def graph_from_bytes(data: bytes) -> Any:
    return _no_program()
