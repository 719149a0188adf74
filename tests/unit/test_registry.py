"""The closed registry: every supported series has a shim, nothing else silently does."""

from __future__ import annotations

import warnings

import pytest

import torchshim
import torchshim.shims as shims
from torchshim import SUPPORTED_SERIES, TorchSeries, UnsupportedTorchVersion


def test_every_series_from_2_5_to_2_15_is_registered_in_order() -> None:
    assert [str(s) for s in SUPPORTED_SERIES] == [f"2.{m}" for m in range(5, 16)]
    assert list(SUPPORTED_SERIES) == sorted(SUPPORTED_SERIES)
    for series in SUPPORTED_SERIES:
        module = shims.shim_for(series)
        assert TorchSeries(*module.FIRST_SERIES) <= series


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Pretend another torch is installed (the oracle's cached answers are swapped)."""

    def use(version: str) -> None:
        monkeypatch.setattr(shims, "installed_torch_version", lambda: version)
        monkeypatch.setattr(shims, "torch_series", lambda: torchshim.parse_series(version))
        shims.active.cache_clear()

    yield use
    shims.active.cache_clear()


@pytest.mark.parametrize("version", ["2.4.1", "2.16.0", "2.16.0.dev20260101", "3.0.0", "1.13.1"])
def test_series_outside_registry_raise(fake_torch, version: str) -> None:  # type: ignore[no-untyped-def]
    fake_torch(version)
    with pytest.raises(UnsupportedTorchVersion) as err:
        shims.active()
    text = str(err.value)
    assert version in text and "2.5" in text and "2.15" in text
    assert "TORCHSHIM_ALLOW_UNTESTED" in text


def test_allow_untested_uses_newest_shim_with_one_warning(
    fake_torch, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TORCHSHIM_ALLOW_UNTESTED", "1")
    fake_torch("2.16.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = shims.active()
        shims.active()  # cached: no second warning
    assert shim.untested and shim.module_name == shims.REGISTRY[SUPPORTED_SERIES[-1]]
    assert [w.category for w in caught] == [torchshim.UntestedTorchWarning]


def test_allow_untested_never_allows_an_older_torch(
    fake_torch, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TORCHSHIM_ALLOW_UNTESTED", "1")
    fake_torch("2.4.1")
    with pytest.raises(UnsupportedTorchVersion):
        shims.active()


@pytest.mark.parametrize("version", ["2.10.0.dev20250901+cu128", "2.10.0rc1", "2.10.0a0+gitabc"])
def test_prereleases_get_their_series_shim(fake_torch, version: str) -> None:  # type: ignore[no-untyped-def]
    fake_torch(version)
    assert shims.active().module_name == shims.REGISTRY[TorchSeries(2, 10)]


def test_capabilities_are_declared_names() -> None:
    for name in set(shims.REGISTRY.values()):
        caps = shims.load_shim_module(name).CAPABILITIES
        assert caps <= set(shims.CAPABILITY_NAMES), caps - set(shims.CAPABILITY_NAMES)
    assert torchshim.capabilities() <= set(shims.CAPABILITY_NAMES)
    assert [str(s) for s in shims.series_providing("supports_standalone_compile")] == [
        f"2.{m}" for m in range(8, 16)
    ]


def test_require_capability_names_providing_series(fake_torch) -> None:  # type: ignore[no-untyped-def]
    fake_torch("2.7.1")
    with pytest.raises(torchshim.CapabilityUnavailable) as err:
        shims.require_capability("supports_standalone_compile")
    assert "2.8" in str(err.value) and "2.15" in str(err.value) and "2.7.1" in str(err.value)
