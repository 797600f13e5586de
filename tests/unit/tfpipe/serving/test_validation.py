"""Requests checked against a signature: good ones become typed columns with the missing defaults, bad ones
a 4xx whose message names the field and the problem."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfpipe.serving.validation import RequestError, Signature, parse_json

INPUTS = {"fare": "float32", "trip_seconds": "int64", "company": "string"}
GOOD = {"fare": 12.5, "trip_seconds": 600, "company": "Flash Cab"}


def signature(max_instances: int = 5) -> Signature:
    return Signature(INPUTS, max_instances)


def test_rows_become_typed_columns_with_missing_defaults():
    columns, rows = signature().columns(
        {"instances": [GOOD, {"fare": None, "trip_seconds": None, "company": None}, {**GOOD, "trip_seconds": 7.0}]}
    )
    assert rows == 3
    assert columns["fare"].dtype == np.float32 and math.isnan(columns["fare"][1])
    assert columns["trip_seconds"].dtype == np.int64 and columns["trip_seconds"].tolist() == [600, -1, 7]
    assert columns["company"].tolist() == ["Flash Cab", "", "Flash Cab"]


def test_columns_are_accepted_the_same_way():
    columns, rows = signature().columns(
        {"inputs": {"fare": [1, None], "trip_seconds": [1, 2], "company": [None, {"b64": "QQ=="}]}}
    )
    assert rows == 2
    assert columns["fare"][0] == 1.0 and math.isnan(columns["fare"][1])
    assert columns["company"].tolist() == ["", b"A"]


BAD = [
    ([1, 2], 400, "must be a JSON object"),
    ({}, 400, "neither 'instances'"),
    ({"instances": [GOOD], "inputs": {}}, 400, "both 'instances' and 'inputs'"),
    ({"instance": [GOOD]}, 400, "unknown key(s) 'instance'"),
    ({"instances": [GOOD], "signature_name": "other"}, 400, "signature_name 'other'"),
    ({"instances": {"fare": 1}}, 400, "'instances' must be a list"),
    ({"instances": []}, 400, "'instances' is empty"),
    ({"instances": [GOOD] * 6}, 413, "6 instances, more than this server's limit of 5"),
    ({"instances": [GOOD, 5]}, 400, "instances[1] must be an object"),
    ({"instances": [{"fare": 1, "trip_seconds": 1}]}, 400, "has no feature 'company'"),
    ({"instances": [{**GOOD, "tips": 3.0}]}, 400, "unknown feature 'tips' ('tips' is known only after the trip"),
    ({"instances": [{**GOOD, "big_tipper": 1}]}, 400, "'big_tipper' is the label"),
    ({"instances": [{**GOOD, "colour": "red"}]}, 400, "the model takes 3: company, fare, trip_seconds"),
    (
        {"instances": [{**GOOD, "fare": "12.5"}]},
        400,
        "instances[0].fare: expected a number (float32) or null, got a string",
    ),
    (
        {"instances": [{**GOOD, "fare": True}]},
        400,
        "instances[0].fare: expected a number (float32) or null, got a boolean",
    ),
    ({"instances": [{**GOOD, "fare": [1]}]}, 400, "instances[0].fare: expected a number (float32) or null, got a list"),
    ({"instances": [{**GOOD, "fare": 1e39}]}, 400, "instances[0].fare: number 1e+39 is out of float32's range"),
    (
        {"instances": [{**GOOD, "trip_seconds": 1.5}]},
        400,
        "instances[0].trip_seconds: expected an integer (int64), got 1.5 with a fraction",
    ),
    (
        {"instances": [{**GOOD, "trip_seconds": 2**63}]},
        400,
        "instances[0].trip_seconds: integer 9223372036854775808 is out of int64's range",
    ),
    ({"instances": [{**GOOD, "trip_seconds": 1e20}]}, 400, "out of int64's range"),
    (
        {"instances": [{**GOOD, "trip_seconds": False}]},
        400,
        "trip_seconds: expected an integer (int64) or null, got a boolean false",
    ),
    (
        {"instances": [{**GOOD, "trip_seconds": "600"}]},
        400,
        "trip_seconds: expected an integer (int64) or null, got a string '600'",
    ),
    ({"instances": [{**GOOD, "company": 7}]}, 400, "instances[0].company: expected a string or null, got 7"),
    ({"instances": [{**GOOD, "company": {"name": "x"}}]}, 400, "company: expected a string or null, got an object"),
    ({"instances": [{**GOOD, "company": {"b64": "%%%"}}]}, 400, "company: {'b64': ...} is not valid base64"),
    ({"inputs": [1, 2]}, 400, "'inputs' must be an object"),
    ({"inputs": {"fare": [1], "trip_seconds": [1]}}, 400, "'inputs' has no feature 'company'"),
    ({"inputs": {"fare": 1, "trip_seconds": [1], "company": ["a"]}}, 400, "inputs.fare must be a list"),
    (
        {"inputs": {"fare": [1, 2], "trip_seconds": [1], "company": ["a"]}},
        400,
        "inputs.trip_seconds has 1 values but inputs.fare has 2",
    ),
    ({"inputs": {"fare": [], "trip_seconds": [], "company": []}}, 400, "'inputs' is empty"),
    ({"inputs": {"fare": ["x"], "trip_seconds": [1], "company": ["a"]}}, 400, "inputs.fare[0]: expected a number"),
]


@pytest.mark.parametrize(("document", "status", "message"), BAD, ids=[m for _, _, m in BAD])
def test_every_bad_request_names_the_field_and_the_problem(document, status, message):
    with pytest.raises(RequestError) as caught:
        signature().columns(document)
    assert caught.value.status == status
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is empty"),
        (b"   ", "the body is empty"),
        (b'{"instances": [', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"a": "\\ud800"}', "not valid Unicode"),
    ],
)
def test_bodies_that_are_not_json_are_400(body, message):
    with pytest.raises(RequestError) as caught:
        parse_json(body)
    assert caught.value.status == 400 and message in caught.value.message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_named_as_such(literal):
    document = parse_json(b'{"instances": [{"fare": ' + literal + b', "trip_seconds": 1, "company": "a"}]}')
    with pytest.raises(RequestError, match=r"instances\[0\]\.fare: expected a finite number"):
        signature().columns(document)
    document = parse_json(b'{"instances": [{"fare": 1, "trip_seconds": ' + literal + b', "company": "a"}]}')
    with pytest.raises(RequestError, match=r"instances\[0\]\.trip_seconds: expected an integer \(int64\), got a non"):
        signature().columns(document)


def test_a_signature_of_unsupported_dtypes_is_refused():
    with pytest.raises(ValueError, match="unsupported"):
        Signature({"image": "complex64"}, 10)
