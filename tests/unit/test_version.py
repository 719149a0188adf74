"""The version oracle, and the traps that string comparisons of torch versions fall into."""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.version import Version

from torchshim import SUPPORTED_SERIES, TorchSeries, TorchVersionParseError, parse_series


@pytest.mark.parametrize(
    ("version", "series"),
    [
        ("2.5.1", (2, 5)),
        ("2.5.1+cu124", (2, 5)),
        ("2.10.0", (2, 10)),
        ("2.10.0.dev20250901+cu128", (2, 10)),  # nightly
        ("2.10.0a0+gitabc1234", (2, 10)),  # source build
        ("2.10.0rc1", (2, 10)),  # release candidate
        ("2.6.0a0+abc.nv25.01", (2, 6)),  # vendor (NGC) build
        ("2.13.0+cpu", (2, 13)),  # local label
        ("2.15.0+cu132", (2, 15)),
        ("2.9", (2, 9)),
        (" 2.11.0 ", (2, 11)),
        ("3.0.0", (3, 0)),
    ],
)
def test_parse_series_policy(version: str, series: tuple[int, int]) -> None:
    assert parse_series(version) == TorchSeries(*series)


@pytest.mark.parametrize("bad", ["", "garbage", "2", "v2..1", "two.ten", "2.x"])
def test_unparsable_versions_raise_typed_error(bad: str) -> None:
    with pytest.raises(TorchVersionParseError):
        parse_series(bad)


def test_non_string_is_rejected() -> None:
    with pytest.raises(TorchVersionParseError):
        parse_series(2.10)  # type: ignore[arg-type]


def test_series_ordering_is_numeric_not_lexicographic() -> None:
    assert parse_series("2.9.1") < parse_series("2.10.0")
    assert parse_series("2.10.0") > parse_series("2.6")
    assert sorted([parse_series("2.10"), parse_series("2.9"), parse_series("2.15")]) == [
        TorchSeries(2, 9),
        TorchSeries(2, 10),
        TorchSeries(2, 15),
    ]
    assert parse_series("2.10.0.dev1") >= parse_series("2.10")


def test_series_is_immutable_hashable_and_prints_as_major_minor() -> None:
    s = TorchSeries(2, 10)
    assert str(s) == "2.10" and s.major == 2 and s.minor == 10
    assert {s: 1}[TorchSeries(2, 10)] == 1
    with pytest.raises(AttributeError):
        s.minor = 11  # type: ignore[misc]
    assert s.module_suffix == "2_10" and TorchSeries(2, 5).module_suffix == "2_05"


# The traps (each one a real bug in public code): the plain-string comparison gives the wrong
# answer, the oracle the right one.
VERSION_AS_TEXT = "2.10.0+cu128"


@pytest.mark.parametrize(
    ("trap", "string_answer", "oracle_answer"),
    [
        (
            "base version >= '2.6'",
            VERSION_AS_TEXT.split("+", maxsplit=1)[0] >= "2.6",
            parse_series(VERSION_AS_TEXT) >= parse_series("2.6"),
        ),
        (
            "'2.9.1' < '2.10.0'",
            "2.9.1" < "2.10.0",
            parse_series("2.9.1") < parse_series("2.10.0"),
        ),
        (
            "startswith('2.1') for 2.10",
            VERSION_AS_TEXT.startswith("2.1"),
            parse_series(VERSION_AS_TEXT) == TorchSeries(2, 1),
        ),
        (
            "a dev build of 2.6 is 2.6",
            Version("2.6.0.dev1") >= Version("2.6"),
            parse_series("2.6.0.dev1") >= parse_series("2.6"),
        ),
        (
            "Lightning's 1.8.9 vs 1.10.0",
            "1.8.9" < "1.10.0",
            parse_series("1.8.9") < parse_series("1.10.0"),
        ),
    ],
)
def test_known_traps(trap: str, string_answer: bool, oracle_answer: bool) -> None:
    assert string_answer != oracle_answer, f"{trap}: no longer a trap?"


def test_trap_answers_are_the_true_ones() -> None:
    assert parse_series(VERSION_AS_TEXT) >= parse_series("2.6")
    assert parse_series("2.9.1") < parse_series("2.10.0")
    assert parse_series(VERSION_AS_TEXT) != TorchSeries(2, 1)


def test_importlib_metadata_version_is_a_plain_str_and_still_parses() -> None:
    raw = importlib.metadata.version("torch")
    assert type(raw) is str  # no TorchVersion magic here
    assert parse_series(raw) in SUPPORTED_SERIES
