"""Node labels, job constraints and array ranges: what the config, the CLI and the HTTP body
accept, and the clear refusal of what a hostile or careless caller sends."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from scheduler.api.bodies import SUBMIT_FIELDS, validate
from scheduler.api.problems import Problem
from scheduler.cli.args import array_range, constraint
from scheduler.config import make_settings
from scheduler.errors import ConfigError, SubmitRefused
from scheduler.labels import LabelError, check_set, parse_list
from scheduler.requests import ArraySpec


def test_node_labels_parse_and_refuse_what_breaks_the_rule() -> None:
    assert parse_list("gpu=none, zone=a,,") == {"gpu": "none", "zone": "a"}
    assert parse_list("") == {}
    assert make_settings(node_labels="zone=a").node.label_set == {"zone": "a"}
    for bad in (
        "zone",
        "zone=a,zone=b",
        "=a",
        "zo ne=a",
        "zone=a b",
        "k=" + "v" * 64,
        "k\n=v",
        "ü=1",
        ",".join(f"k{i}=v" for i in range(33)),
    ):
        with pytest.raises(ConfigError, match="node_labels"):
            make_settings(node_labels=bad)


def test_constraints_are_a_bounded_object_of_label_strings() -> None:
    assert check_set({"zone": "a", "gpu": ""}) == {"zone": "a", "gpu": ""}
    bad: Any
    for bad in (
        [],
        "zone=a",
        {"zone": 1},
        {"zone": {"x": "y"}},
        {"": "a"},
        {"a;b": "c"},
        {f"k{i}": "v" for i in range(33)},
        {"k": "\0"},
    ):
        with pytest.raises(LabelError):
            check_set(bad)
    assert constraint("zone=a") == ("zone", "a")
    with pytest.raises(argparse.ArgumentTypeError):
        constraint("zone")


def test_array_ranges_from_the_cli() -> None:
    assert array_range("0-99%10") == (0, 99, 10)
    assert array_range("5-5") == (5, 5, None)
    for bad in ("9-0", "0-99%0", "-1-5", "0-99%", "a-b", "0-2147483648", "0-1%x", "0 -1"):
        with pytest.raises(argparse.ArgumentTypeError):
            array_range(bad)


def test_array_size_is_bounded_by_the_operator() -> None:
    ArraySpec(0, 9999, 5).check(10_000)
    with pytest.raises(SubmitRefused, match="max_array_size"):
        ArraySpec(0, 10_000).check(10_000)
    with pytest.raises(SubmitRefused, match="max_running"):
        ArraySpec(0, 1, 0).check(10)
    with pytest.raises(ConfigError, match="max_array_size"):
        make_settings(max_array_size=0)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        ({"start": 0}, "start and end are required"),
        ({"start": 5, "end": 1}, "start must be <= end"),
        ({"start": -1, "end": 1}, "must be in"),
        ({"start": 0, "end": 1, "max_running": 0}, "must be in"),
        ({"start": 0, "end": 1, "extra": 1}, "unknown keys"),
        ({"start": True, "end": 1}, "expected an integer"),
        ([0, 1], "expected an object"),
    ],
)
def test_http_array_field_refuses_bad_shapes(array: Any, message: str) -> None:
    with pytest.raises(Problem) as caught:
        validate({"argv": ["true"], "array": array}, SUBMIT_FIELDS, ("argv",))
    assert caught.value.status == 422 and message in str(caught.value.detail)


def test_http_constraints_field() -> None:
    values = validate({"argv": ["true"], "constraints": {"zone": "a"}}, SUBMIT_FIELDS, ("argv",))
    assert values["constraints"] == {"zone": "a"}
    with pytest.raises(Problem):
        validate({"argv": ["true"], "constraints": {"zone": "a b"}}, SUBMIT_FIELDS, ("argv",))
