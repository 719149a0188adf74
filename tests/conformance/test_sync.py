"""The tox env list, the registry, the pyproject bounds, the README's support table and the hook
inventory agree with each other.

The registry (``torchshim.shims.REGISTRY`` and the capabilities of its shim modules) is the
reference; every other place that names the supported series or what they offer is checked
against it. docs/MAINTAINING.md says which files to change when a series is added."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

from torchshim import SUPPORTED_SERIES, parse_series
from torchshim.doctor import ADAPTOR_NAMES, load_inventory
from torchshim.shims import REGISTRY, load_shim_module, series_providing

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
    """The torch envs of tox's env_list, in its order (``torch{25,26}`` or ``torch25, torch26``:
    tox.ini lists them longest-running first)."""
    env_list = _tox()["tox"]["env_list"]

    def expand(match: re.Match[str]) -> str:
        return ", ".join(f"torch{f.strip()}" for f in match.group(1).split(","))

    return re.findall(r"\btorch\d+\b", re.sub(r"torch\{([^}]*)\}", expand, env_list))


def _expected_env(series: object) -> str:
    major, minor = str(series).split(".")
    return f"torch{major}{minor}"


def test_tox_has_one_env_per_supported_series() -> None:
    envs = _series_envs()
    assert len(envs) == len(set(envs)), envs
    assert sorted(envs) == sorted(_expected_env(s) for s in SUPPORTED_SERIES)
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


def test_type_env_checks_against_the_newest_series() -> None:
    deps = _tox()["testenv:type"]["deps"]
    newest = SUPPORTED_SERIES[-1]
    assert re.search(rf"^\s*torch~={re.escape(str(newest))}\.0\s*$", deps, re.M), (
        f"tox env 'type' must run mypy against the newest series, torch~={newest}.0"
    )


def test_stated_support_range_matches_registry() -> None:
    low, high = SUPPORTED_SERIES[0], SUPPORTED_SERIES[-1]
    readme = (ROOT / "README.md").read_text()
    headline = readme.split("\n\n", 2)[1]  # the bold line under the title
    assert re.search(rf"from\s+{re.escape(str(low))}\s+to\s+{re.escape(str(high))}\.", headline), (
        f"README's headline must say 'from {low} to {high}': {headline!r}"
    )
    description = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    assert description.endswith(f"torch {low} to {high}"), description


#: What the README's adaptor columns say for a series, from the capabilities its shim declares.
ADAPTOR_COLUMNS = {
    "inductor": "supports_inductor_fx_cache",
    "inductor_standalone": "supports_standalone_compile",
}


def test_readme_support_table_matches_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(
        r"^\| (\d+\.\d+) \| `torch(\d+)` \| `(torch_\d+_\d+)` \| ([^|]+) \| ([^|]+) \|$",
        readme,
        re.M,
    )
    assert [r[0] for r in rows] == [str(s) for s in SUPPORTED_SERIES]
    for series_text, env_suffix, module, *columns in rows:
        series = next(s for s in SUPPORTED_SERIES if str(s) == series_text)
        assert f"torch{env_suffix}" == _expected_env(series)
        assert module == REGISTRY[series]
        capabilities = load_shim_module(REGISTRY[series]).CAPABILITIES
        for (adaptor, capability), cell in zip(ADAPTOR_COLUMNS.items(), columns, strict=True):
            if capability in capabilities:
                want = "yes"
            else:
                want = f"no (needs {series_providing(capability)[0]})"
            assert cell.strip() == want, f"README {series} {adaptor}: {cell.strip()!r} != {want!r}"


def test_inventory_covers_every_patched_hook() -> None:
    paths = {e.path for e in load_inventory()}
    for name in set(REGISTRY.values()):
        for target in load_shim_module(name).PATCH_TARGETS:
            assert target in paths, f"{name} patches {target}, which matrix/hooks.toml lacks"


def test_inventory_expectations_stay_within_the_registry() -> None:
    oldest, newest = SUPPORTED_SERIES[0], SUPPORTED_SERIES[-1]
    for entry in load_inventory():
        named = [entry.since, *entry.signatures, *([entry.until] if entry.until else [])]
        beyond = [str(s) for s in named if s > newest]
        assert not beyond, f"{entry.name}: expectations for unsupported series {beyond}"
        assert entry.until is None or entry.until >= oldest, (
            f"{entry.name}: expected only until {entry.until}, older than every supported series "
            "(remove the entry)"
        )
        unknown = set(entry.adaptors) - set(ADAPTOR_NAMES)
        assert not unknown, f"{entry.name} names adaptors torchshim does not have: {unknown}"
    text = (ROOT / "src" / "torchshim" / "hooks.toml").read_text()
    measured = re.search(r"Measured on torch (\S+) \.\.\. (\S+?)\.$", text, re.M)
    assert measured, "hooks.toml must say which torch releases it was measured on"
    first, last = (parse_series(v) for v in measured.groups())
    assert (first, last) == (oldest, newest), (
        f"hooks.toml was measured on {first} ... {last}; the registry supports "
        f"{oldest} ... {newest}: measure the new series and update the line"
    )


def test_standalone_is_offered_only_where_its_hooks_are_expected() -> None:
    offered = series_providing("supports_standalone_compile")
    assert offered
    for entry in load_inventory():
        if "inductor_standalone" in entry.adaptors:
            missing = [str(s) for s in offered if not entry.expected_in(s)]
            assert not missing, f"{entry.name} is not expected in {missing}, where standalone is"


def test_matrix_hooks_toml_is_a_link_to_the_packaged_inventory() -> None:
    # doctor reads the packaged file; the README points readers at matrix/hooks.toml: one file
    link = ROOT / "matrix" / "hooks.toml"
    assert link.is_symlink(), "matrix/hooks.toml must be a link, not a copy that can drift"
    assert link.resolve() == (ROOT / "src" / "torchshim" / "hooks.toml").resolve()
