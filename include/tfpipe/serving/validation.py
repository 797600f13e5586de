"""A predict request checked against the model's signature, into one numpy column per input.

TensorFlow Serving's two request shapes are accepted:

- row format: `{"instances": [{"fare": 12.5, "company": null, ...}, ...]}`;
- columnar format: `{"inputs": {"fare": [12.5, ...], "company": [null, ...]}}`.

Every input of the signature must be present in every instance; `null` is a missing value and becomes the
model's missing default (NaN for floats, -1 for integers, "" for strings: see tfpipe.training.model). Every
problem is a `RequestError` with a 4xx status and a message that names the field and says what is wrong,
never an exception that would turn into a 5xx. No TensorFlow here: the signature arrives as
{input name: dtype name}.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

MISSING_FLOAT = math.nan
MISSING_INT = -1
MISSING_STRING = ""

# Columns that must never reach a model: `tips` is known only after the trip, `big_tipper` is the label.
LEAKS = {
    "tips": "'tips' is known only after the trip",
    "big_tipper": "'big_tipper' is the label the model predicts",
}

_INT_RANGES = {
    "int64": (-(2**63), 2**63 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
}
_FLOAT_MAX = {"float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}
_FLOAT_MAX["float16"] = float(np.finfo(np.float16).max)
SUPPORTED_DTYPES = frozenset({*_INT_RANGES, *_FLOAT_MAX, "string", "bool"})
_TOP_LEVEL_KEYS = ("instances", "inputs", "signature_name")


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP status (4xx), the message names the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _describe(value: Any) -> str:
    if value is True or value is False:
        return f"a boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"a string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _integer(dtype: str):
    low, high = _INT_RANGES[dtype]

    def convert(value: Any, where: str) -> int:
        kind = type(value)
        if kind is int:
            if low <= value <= high:
                return value
            raise RequestError(400, f"{where}: integer {value} is out of {dtype}'s range [{low}, {high}]")
        if value is None:
            return MISSING_INT
        if kind is float:
            if not math.isfinite(value):
                raise RequestError(400, f"{where}: expected an integer ({dtype}), got a non-finite number {value}")
            if not value.is_integer():
                raise RequestError(400, f"{where}: expected an integer ({dtype}), got {value!r} with a fraction")
            number = int(value)
            if low <= number <= high:
                return number
            raise RequestError(400, f"{where}: integer {value!r} is out of {dtype}'s range [{low}, {high}]")
        raise RequestError(400, f"{where}: expected an integer ({dtype}) or null, got {_describe(value)}")

    return convert


def _floating(dtype: str):
    largest = _FLOAT_MAX[dtype]

    def convert(value: Any, where: str) -> float:
        kind = type(value)
        if kind is float or kind is int:
            if not math.isfinite(value):
                raise RequestError(
                    400, f"{where}: expected a finite number ({dtype}), got {value}; send null for a missing value"
                )
            if abs(value) > largest:
                raise RequestError(400, f"{where}: number {value!r} is out of {dtype}'s range")
            return value
        if value is None:
            return MISSING_FLOAT
        raise RequestError(400, f"{where}: expected a number ({dtype}) or null, got {_describe(value)}")

    return convert


def _string(value: Any, where: str) -> str | bytes:
    if type(value) is str:
        return value
    if value is None:
        return MISSING_STRING
    # TF Serving's encoding of binary strings: {"b64": "..."}.
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{where}: {{'b64': ...}} is not valid base64") from None
    raise RequestError(400, f"{where}: expected a string or null, got {_describe(value)}")


def _boolean(value: Any, where: str) -> bool:
    if value is True or value is False:
        return value
    if value is None:
        return False
    raise RequestError(400, f"{where}: expected a boolean or null, got {_describe(value)}")


def _converter(dtype: str):
    if dtype in _INT_RANGES:
        return _integer(dtype)
    if dtype in _FLOAT_MAX:
        return _floating(dtype)
    if dtype == "string":
        return _string
    if dtype == "bool":
        return _boolean
    raise ValueError(f"unsupported input dtype {dtype!r}")


def _numpy_dtype(dtype: str) -> Any:
    return object if dtype == "string" else np.dtype(dtype)


class Signature:
    """The inputs a model takes, {name: dtype name}, and how to check and columnize a request for it."""

    def __init__(self, inputs: Mapping[str, str], max_instances: int) -> None:
        unsupported = {name: dtype for name, dtype in inputs.items() if dtype not in SUPPORTED_DTYPES}
        if unsupported:
            raise ValueError(f"inputs of unsupported dtypes: {unsupported}")
        self.inputs = dict(inputs)
        self.max_instances = max_instances
        self._names = frozenset(self.inputs)
        self._converters = {name: _converter(dtype) for name, dtype in self.inputs.items()}
        self._listing = ", ".join(sorted(self.inputs))

    def _unknown(self, name: str, where: str) -> RequestError:
        hint = f" ({LEAKS[name]}: never send it)" if name in LEAKS else ""
        return RequestError(
            400, f"{where} has unknown feature {name!r}{hint}; the model takes {len(self.inputs)}: {self._listing}"
        )

    def _missing(self, name: str, where: str) -> RequestError:
        return RequestError(
            400,
            f"{where} has no feature {name!r}: every instance needs all {len(self.inputs)} features of the model; "
            "send null for a missing value",
        )

    def _check_count(self, count: int, what: str) -> None:
        if count == 0:
            raise RequestError(400, f"'{what}' is empty: send at least one instance")
        if count > self.max_instances:
            raise RequestError(
                413, f"'{what}' has {count} instances, more than this server's limit of {self.max_instances}"
            )

    def columns(self, document: Any) -> tuple[dict[str, np.ndarray], int]:
        """One numpy array per input from a parsed request body, and the number of instances."""
        if not isinstance(document, dict):
            raise RequestError(
                400, f"the body must be a JSON object with 'instances' or 'inputs', got {_describe(document)}"
            )
        unknown = [key for key in document if key not in _TOP_LEVEL_KEYS]
        if unknown:
            raise RequestError(
                400,
                f"the request has unknown key(s) {', '.join(map(repr, unknown))}: "
                "send 'instances' (a list of rows) or 'inputs' (columns)",
            )
        signature_name = document.get("signature_name", "serving_default")
        if signature_name not in ("serving_default", ""):
            raise RequestError(
                400, f"signature_name {signature_name!r} is not served: this model has 'serving_default' only"
            )
        has_instances, has_inputs = "instances" in document, "inputs" in document
        if has_instances == has_inputs:
            raise RequestError(
                400,
                "the request has both 'instances' and 'inputs': send one of them"
                if has_instances
                else "the request has neither 'instances' (rows) nor 'inputs' (columns)",
            )
        if has_instances:
            return self._from_rows(document["instances"])
        return self._from_columns(document["inputs"])

    def _from_rows(self, instances: Any) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(instances, list):
            raise RequestError(400, f"'instances' must be a list of objects, got {_describe(instances)}")
        count = len(instances)
        self._check_count(count, "instances")
        values: dict[str, list[Any]] = {name: [None] * count for name in self.inputs}
        converters = self._converters.items()
        names = self._names
        for index, instance in enumerate(instances):
            if type(instance) is not dict:
                raise RequestError(
                    400, f"instances[{index}] must be an object of feature values, got {_describe(instance)}"
                )
            if instance.keys() != names:
                where = f"instances[{index}]"
                for name in instance:
                    if name not in names:
                        raise self._unknown(name, where)
                missing = sorted(names - instance.keys())
                raise self._missing(missing[0], where)
            for name, convert in converters:
                values[name][index] = convert(instance[name], f"instances[{index}].{name}")
        return self._arrays(values), count

    def _from_columns(self, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(inputs, dict):
            raise RequestError(400, f"'inputs' must be an object of feature columns, got {_describe(inputs)}")
        for name in inputs:
            if name not in self._names:
                raise self._unknown(name, "'inputs'")
        for name in sorted(self._names - inputs.keys()):
            raise self._missing(name, "'inputs'")
        count = None
        first = None
        for name in self.inputs:
            column = inputs[name]
            if not isinstance(column, list):
                raise RequestError(
                    400, f"inputs.{name} must be a list of values (one per instance), got {_describe(column)}"
                )
            if count is None:
                count, first = len(column), name
            elif len(column) != count:
                raise RequestError(
                    400,
                    f"inputs.{name} has {len(column)} values but inputs.{first} has {count}: "
                    "every column needs one value per instance",
                )
        assert count is not None
        self._check_count(count, "inputs")
        values = {}
        for name, convert in self._converters.items():
            values[name] = [convert(value, f"inputs.{name}[{index}]") for index, value in enumerate(inputs[name])]
        return self._arrays(values), count

    def _arrays(self, values: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        out = {}
        for name, column in values.items():
            dtype = self.inputs[name]
            if dtype == "string":
                array = np.empty(len(column), dtype=object)
                array[:] = column
            else:
                array = np.asarray(column, dtype=_numpy_dtype(dtype))
            out[name] = array
        return out


def parse_json(body: bytes) -> Any:
    """The parsed body; RequestError(400) naming where the JSON breaks, or its non-finite number."""
    if not body.strip():
        raise RequestError(400, "the body is empty: send a JSON object with 'instances' or 'inputs'")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        # The slow parser tells NaN/Infinity and too-large numbers (valid for it) from broken JSON.
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(400, f"the body is not UTF-8 JSON: {exc}") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RequestError(400, f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise RequestError(400, "the body is not valid JSON: nested too deeply") from None
        if "surrogate" in str(fast_error):
            raise RequestError(400, f"the body has a string that is not valid Unicode: {fast_error}") from None
        return document
