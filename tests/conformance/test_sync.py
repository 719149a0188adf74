"""The tox env list, the registry, the pyproject bounds, the README's support table and the hook
inventory agree with each other."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

from torchshim import SUPPORTED_SERIES
from torchshim.doctor import load_inventory
from torchshim.shims import REGISTRY, load_shim_module

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return parser


def _series_envs() -> list[str]:
    env_list = _tox()["tox"]["env_list"]
    match = re.search(r"torch\{([^}]*)\}", env_list)
    assert match, "tox env_list must name torch{...} envs"
    return [f"torch{f.strip()}" for f in match.group(1).split(",")]


def _expected_env(series: object) -> str:
    major, minor = str(series).split(".")
    return f"torch{major}{minor}"


def test_tox_has_one_env_per_supported_series() -> None:
    assert _series_envs() == [_expected_env(s) for s in SUPPORTED_SERIES]
    assert {"lint", "type"} <= set(re.findall(r"\b(\w+)\b", _tox()["tox"]["env_list"]))


def test_tox_installs_and_expects_each_series() -> None:
    section = _tox()["testenv"]
    deps, setenv = section["deps"], section["set_env"]
    for series in SUPPORTED_SERIES:
        env = _expected_env(series)
        assert re.search(rf"^\s*{env}: torch~={series}\.0\s*$", deps, re.M), f"{env} deps"
        assert re.search(
            rf"^\s*{env}: TORCHSHIM_EXPECT_SERIES\s*=\s*{re.escape(str(series))}\s*$", setenv, re.M
        ), f"{env} TORCHSHIM_EXPECT_SERIES"
    assert "setuptools" in deps and "TORCHINDUCTOR_CACHE_DIR" in setenv


def test_pyproject_bounds_match_registry() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(d for d in project["dependencies"] if d.startswith("torch"))
    low, high = SUPPORTED_SERIES[0], SUPPORTED_SERIES[-1]
    assert torch_req.replace(" ", "") == f"torch>={low},<{high.major}.{high.minor + 1}"


def test_readme_support_table_matches_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (\d+\.\d+) \| `torch(\d+)` \| `(torch_\d+_\d+)` \|", readme, re.M)
    assert [r[0] for r in rows] == [str(s) for s in SUPPORTED_SERIES]
    for series_text, env_suffix, module in rows:
        series = next(s for s in SUPPORTED_SERIES if str(s) == series_text)
        assert f"torch{env_suffix}" == _expected_env(series)
        assert module == REGISTRY[series]


def test_inventory_covers_every_patched_hook() -> None:
    paths = {e.path for e in load_inventory()}
    for name in set(REGISTRY.values()):
        for target in load_shim_module(name).PATCH_TARGETS:
            assert target in paths, f"{name} patches {target}, which matrix/hooks.toml lacks"


def test_matrix_hooks_toml_is_the_packaged_inventory() -> None:
    packaged = (ROOT / "src" / "torchshim" / "hooks.toml").read_text()
    assert (ROOT / "matrix" / "hooks.toml").read_text() == packaged
