"""Runs first in every tox env: the installed torch must be the series the env asked for."""

from __future__ import annotations

import os

import pytest

from torchshim import parse_series, torch_series


def test_installed_torch_is_the_series_the_env_asked_for() -> None:
    expected = os.environ.get("TORCHSHIM_EXPECT_SERIES")
    if not expected:
        pytest.skip("not inside a tox series env (TORCHSHIM_EXPECT_SERIES unset)")
    assert torch_series() == parse_series(expected), (
        f"env asked for torch {expected}, but torch series {torch_series()} is installed"
    )
