"""Every shim module exports the surface the Protocol names, with the same signatures."""

from __future__ import annotations

import inspect

import pytest

from torchshim.shims import REGISTRY, load_shim_module
from torchshim.shims._protocol import ShimModule

MODULES = sorted(set(REGISTRY.values()))
MEMBERS = [
    name
    for name, value in vars(ShimModule).items()
    if not name.startswith("_") and inspect.isfunction(value)
]
CONSTANTS = list(ShimModule.__annotations__)


def test_protocol_is_not_empty() -> None:
    assert len(MEMBERS) >= 15 and set(CONSTANTS) == {
        "FIRST_SERIES",
        "CAPABILITIES",
        "PATCH_TARGETS",
    }


@pytest.mark.parametrize("module_name", MODULES)
def test_module_conforms(module_name: str) -> None:
    module = load_shim_module(module_name)
    for const in CONSTANTS:
        assert hasattr(module, const), f"{module_name} lacks {const}"
    assert isinstance(module.CAPABILITIES, frozenset)
    for name in MEMBERS:
        fn = getattr(module, name, None)
        assert callable(fn), f"{module_name}.{name} missing"
        want = [p for p in inspect.signature(getattr(ShimModule, name)).parameters if p != "self"]
        have = list(inspect.signature(fn).parameters)
        assert have == want, f"{module_name}.{name}{have} != protocol {want}"


@pytest.mark.parametrize("module_name", MODULES)
def test_module_name_matches_first_series(module_name: str) -> None:
    major, minor = load_shim_module(module_name).FIRST_SERIES
    assert module_name == f"torch_{major}_{minor:02d}"
    assert all(REGISTRY[s] != module_name or (s.major, s.minor) >= (major, minor) for s in REGISTRY)
