"""Every TORCHSHIM_* variable is read in one module and a bad value is one typed error that names
the variable and the accepted form, raised before anything is traced or written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import torchshim
from torchshim import config
from torchshim.errors import ConfigError, UnknownAdaptorError
from torchshim.options import BackendOptions

BAD = {
    "TORCHSHIM_RANK": ("x", "an integer >= 0"),
    "TORCHSHIM_LOCK_TIMEOUT": ("abc", "finite number of seconds"),
    "TORCHSHIM_COMPILE_SIZES": ("1,,2", "an empty entry"),
    "TORCHSHIM_STRICT": ("maybe", "a switch"),
    "TORCHSHIM_CACHE_SHARED": ("perhaps", "a switch"),
    "TORCHSHIM_ALLOW_UNTESTED": ("2", "a switch"),
    "TORCHSHIM_ADAPTOR": ("tvm", "one of auto, inductor"),
    "TORCHSHIM_COMPILER_CONFIG": ("[1]", "not a JSON object"),
}
MORE_BAD = {
    "TORCHSHIM_LOCK_TIMEOUT": ["-5", "nan", "inf"],
    "TORCHSHIM_COMPILE_SIZES": ["0", "1,b", "2,-1"],
    "TORCHSHIM_COMPILER_CONFIG": ["{not json"],
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_variable_is_one_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    value, form = BAD[name]
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as info:
        config.check_environment()
    assert form in str(info.value) and repr(value) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in MORE_BAD.items() for v in values]
)
def test_values_that_were_accepted_silently_are_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        config.check_environment()


@pytest.mark.parametrize(
    "name", ["TORCHSHIM_STRICT", "TORCHSHIM_CACHE_SHARED", "TORCHSHIM_ALLOW_UNTESTED"]
)
def test_every_switch_takes_the_same_spellings(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    getter = {
        "TORCHSHIM_STRICT": config.strict,
        "TORCHSHIM_CACHE_SHARED": config.cache_shared,
        "TORCHSHIM_ALLOW_UNTESTED": config.allow_untested,
    }[name]
    spellings = [("1", True), ("TRUE", True), ("yes", True), ("on", True)]
    for text, expected in [
        *spellings,
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ]:
        monkeypatch.setenv(name, text)
        assert getter() is expected, text


def test_good_values_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSHIM_COMPILE_SIZES", " 1, 2 ,8")
    monkeypatch.setenv("TORCHSHIM_LOCK_TIMEOUT", "2.5")
    monkeypatch.setenv("TORCHSHIM_RANK", "3")
    monkeypatch.setenv("TORCHSHIM_COMPILER_CONFIG", '{"max_autotune": false}')
    options = BackendOptions.from_environment()
    assert options.compile_sizes == (1, 2, 8) and options.lock_timeout == 2.5
    assert options.rank == 3 and options.compiler_config == {"max_autotune": False}


def test_the_library_reads_torchshim_variables_only_in_the_config_module() -> None:
    package = Path(torchshim.__file__).parent
    readers = []
    for path in package.rglob("*.py"):
        if path.name == "config.py":
            continue
        text = path.read_text()
        for needle in ('environ.get("TORCHSHIM_', 'getenv("TORCHSHIM_', 'environ["TORCHSHIM_'):
            if needle in text:
                readers.append(f"{path.relative_to(package)}: {needle}")
    assert readers == []


def test_bad_settings_fail_at_construction_not_inside_a_trace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compile_sizes"):
        torchshim.compile(lambda x: x, tmp_path, compile_sizes=[1, 0])
    with pytest.raises(ConfigError, match="lock_timeout"):
        torchshim.backend(tmp_path, lock_timeout=float("nan"))
    with pytest.raises(ConfigError, match=r"unknown backend setting.*compile_size\b"):
        torchshim.backend(tmp_path, compile_size=[1])
    with pytest.raises(UnknownAdaptorError, match="tvm"):
        torchshim.backend(tmp_path, adaptor="tvm")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        ({"no_such_option": 1}, "'no_such_option' is not an Inductor config option"),
        ({"max_autotune": "banana"}, "'max_autotune' takes true or false"),
    ],
)
def test_an_invalid_compiler_config_is_a_config_error_not_a_rejected_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        torchshim.backend(tmp_path, adaptor="inductor", compiler_config=patch)
    import json

    from torchshim.compile_backend import Backend

    # what torch.compile(model, backend="torchshim") builds from the environment
    monkeypatch.setenv("TORCHSHIM_COMPILER_CONFIG", json.dumps(patch))
    monkeypatch.setenv("TORCHSHIM_ADAPTOR", "inductor")
    monkeypatch.setenv("TORCHSHIM_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=says):
        Backend(BackendOptions.from_environment())


def test_cli_with_a_bad_variable_prints_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "torchshim", "cache", "info", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "TORCHSHIM_STRICT": "maybe"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "TORCHSHIM_STRICT='maybe'" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_readme_documents_every_variable() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert [name for name in config.VARIABLES if f"`{name}" not in readme] == []
