"""Scoped patches restore on exit, also on exceptions, and refuse to create attributes."""

from __future__ import annotations

import os

import pytest

from torchshim import PatchTargetMissing
from torchshim._patching import active_patch_count, patch_attr, patch_environ


class Base:
    @staticmethod
    def hook() -> str:
        return "base"


class Child(Base):
    @classmethod
    def own(cls) -> str:
        return "own"


def test_patch_restores_on_exit_and_on_exception() -> None:
    with patch_attr(Child, "own", classmethod(lambda cls: "patched")):
        assert Child.own() == "patched"
        assert active_patch_count() == 1
    assert Child.own() == "own" and active_patch_count() == 0
    with pytest.raises(RuntimeError), patch_attr(Child, "own", staticmethod(lambda: "x")):
        raise RuntimeError("boom")
    assert Child.own() == "own"
    assert isinstance(vars(Child)["own"], classmethod)


def test_inherited_attribute_is_unpinned_after_patch() -> None:
    with patch_attr(Child, "hook", staticmethod(lambda: "patched")):
        assert Child.hook() == "patched" and Base.hook() == "base"
    assert "hook" not in vars(Child) and Child.hook() == "base"


def test_refuses_to_patch_missing_attribute() -> None:
    with pytest.raises(PatchTargetMissing, match="doctor"), patch_attr(Child, "gone", 1):
        pass
    assert not hasattr(Child, "gone")


def test_patch_environ_sets_unsets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSHIM_T1", "old")
    monkeypatch.delenv("TORCHSHIM_T2", raising=False)
    with pytest.raises(ValueError), patch_environ({"TORCHSHIM_T1": None, "TORCHSHIM_T2": "new"}):
        assert "TORCHSHIM_T1" not in os.environ and os.environ["TORCHSHIM_T2"] == "new"
        raise ValueError
    assert os.environ["TORCHSHIM_T1"] == "old" and "TORCHSHIM_T2" not in os.environ
