"""A guard a specialised compile assumed is no assumption when Dynamo's own guards prove it: the
shape environment's static evaluation, helped by symbols an equality guard pins to one value."""

from __future__ import annotations

from typing import Any

import sympy
from torch._dynamo.source import LocalSource
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

from torchshim.shims import _shape_env


def _env() -> tuple[Any, Any, Any]:
    """GPT-2's logits frame under dynamic=True: a sequence length and an int input
    (``logits_to_keep``, 0) that Dynamo traces as a symbol of its own."""
    env = ShapeEnv()
    seq = env.create_symbol(8, LocalSource("seq"), dynamic_dim=DimDynamic.DYNAMIC)
    keep = env.create_unspecified_symbol(0, LocalSource("keep"), dynamic_dim=DimDynamic.DYNAMIC)
    return env, seq, keep


def test_a_guard_the_environment_proves_is_known() -> None:
    env, seq, keep = _env()
    assumed = sympy.Ge(192 * seq + 192 * keep, 2)  # what Inductor assumed for batch 3
    assert not _shape_env._known_to(env, assumed)  # keep could be anything yet
    # Dynamo's guard from slicing the last `keep` positions: keep == 0. On torch >= 2.8 it
    # stays a guard (no replacement), which the shape environment alone does not use here.
    env.evaluate_expr(sympy.Eq(64 * seq, 64 * seq + 64 * keep))
    assert _shape_env._known_to(env, assumed)


def test_a_guard_the_environment_does_not_prove_is_not_known() -> None:
    env, seq, keep = _env()
    env.evaluate_expr(sympy.Eq(64 * seq, 64 * seq + 64 * keep))
    assert not _shape_env._known_to(env, sympy.Ge(seq, 10))  # false for the example, too
    assert not _shape_env._known_to(env, sympy.Lt(seq, 100))  # holds for the example only
    assert not _shape_env._known_to(None, sympy.Ge(seq, 0))  # no environment: nothing known
    assert not _shape_env._known_to(env, sympy.true)  # no symbol: not a guard on sizes
