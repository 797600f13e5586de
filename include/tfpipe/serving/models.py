"""One loaded model version: a SavedModel's `serving_default` concrete function, warmed up, with its own thread.

The signature is read from the loaded SavedModel, never hard-coded: input names and dtypes (rank-1 tensors,
one per raw feature) drive request validation, and the signature def is what GET .../metadata returns.
Calls go to the concrete function of `tf.saved_model.load` directly (no Keras `predict`, whose per-call
overhead is tens of milliseconds), in one executor thread per version so a slow version cannot hold up
another.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from tfpipe.serving import validation

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"
WARMUP_ROUNDS = 3
_threads_configured = False


_BOILERPLATE = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[", "File ")


def describe_error(exc: BaseException) -> str:
    """`Type: the informative line` of an exception; TensorFlow's runtime errors bury it under boilerplate."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    text = re.sub(r"\s*\[Op:[^\]]*\]$", "", (useful or lines or [""])[0])[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LoadError(Exception):
    """A model that cannot serve: not a SavedModel, no `serving_default`, inputs we cannot take."""


def configure_threads() -> None:
    """Limit TensorFlow's thread pools for a small machine (2 cores here): one model call uses
    TFPIPE_SERVING_INTRA_OP_THREADS (default 1) threads for an op, TFPIPE_SERVING_INTER_OP_THREADS (default
    1) ops at a time; parallelism comes from batching and one thread per version instead. Only possible
    before TensorFlow's runtime starts; later it is left as it is."""
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    intra = int(os.environ.get("TFPIPE_SERVING_INTRA_OP_THREADS", "1"))
    inter = int(os.environ.get("TFPIPE_SERVING_INTER_OP_THREADS", "1"))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        log.info("TensorFlow is already initialized: its thread pools stay as they are")


def normalize_uri(uri: str) -> str:
    """A model URI in one spelling, to tell "the same model again" from "another model"."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return uri.rstrip("/")
    return os.path.normpath(uri)


def missing_value(dtype: str) -> Any:
    if dtype == "string":
        return validation.MISSING_STRING
    if dtype.startswith("float"):
        return validation.MISSING_FLOAT
    if dtype == "bool":
        return False
    return validation.MISSING_INT


def missing_columns(inputs: dict[str, str], rows: int) -> dict[str, np.ndarray]:
    """`rows` instances with every value missing: the warm-up batch."""
    columns = {}
    for name, dtype in inputs.items():
        if dtype == "string":
            column = np.empty(rows, dtype=object)
            column[:] = validation.MISSING_STRING
        else:
            column = np.full(rows, missing_value(dtype), dtype=np.dtype(dtype))
        columns[name] = column
    return columns


def _signature_defs(uri: str) -> Any:
    from tensorflow.python.tools import saved_model_utils

    try:
        return saved_model_utils.get_meta_graph_def(uri, "serve").signature_def
    except (OSError, RuntimeError, ValueError) as exc:
        raise LoadError(f"{uri}: cannot read the SavedModel's 'serve' metagraph: {exc}") from None


class ModelVersion:
    """A version of the served model. `load()` runs in a loader thread; `run()` in the version's own thread."""

    def __init__(self, version: str, model_uri: str) -> None:
        self.version = version
        self.model_uri = model_uri
        self.state = LOADING
        self.warmup_error: str | None = None
        self.load_seconds: float | None = None
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.signature: validation.Signature | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{version}")
        self.batcher: Any = None  # set by the server once loaded
        self._signature_defs: Any = None
        self._loaded: Any = None
        self._function: Any = None
        self._dtypes: dict[str, tf.DType] = {}
        self._flat_names: list[str] | None = None

    def load(self, max_instances: int, warmup_rows: int) -> None:
        started = time.perf_counter()
        uri = self.model_uri
        if "://" not in uri and not os.path.isabs(uri):
            raise LoadError(f"model_uri {uri!r} must be an absolute path or a URI such as gs://...")
        if not tf.io.gfile.exists(uri):
            raise LoadError(f"{uri} does not exist")
        if not tf.saved_model.contains_saved_model(uri):
            raise LoadError(f"{uri} is not a SavedModel (no saved_model.pb in it)")
        self._signature_defs = _signature_defs(uri)
        try:
            loaded = tf.saved_model.load(uri, tags=["serve"])
        except Exception as exc:
            raise LoadError(f"{uri}: TensorFlow cannot load the SavedModel: {type(exc).__name__}: {exc}") from None
        signatures = getattr(loaded, "signatures", {})
        if SIGNATURE not in signatures:
            raise LoadError(f"{uri}: the SavedModel has no {SIGNATURE!r} signature (it has {sorted(signatures)})")
        function = signatures[SIGNATURE]
        args, kwargs = function.structured_input_signature
        if args:
            raise LoadError(f"{uri}: {SIGNATURE} takes positional inputs; expected named tensors")
        for name, spec in kwargs.items():
            if spec.shape.rank != 1:
                raise LoadError(f"{uri}: input {name!r} has shape {spec.shape}; expected rank-1 tensors [batch]")
        inputs = {name: spec.dtype.name for name, spec in kwargs.items()}
        try:
            signature = validation.Signature(inputs, max_instances)
        except ValueError as exc:
            raise LoadError(f"{uri}: {exc}") from None
        outputs = function.structured_outputs
        if not isinstance(outputs, dict) or not outputs:
            raise LoadError(f"{uri}: {SIGNATURE} must return a dict of named tensors")
        self._loaded = loaded  # keeps the variables alive
        self._function = function
        self._dtypes = {name: spec.dtype for name, spec in kwargs.items()}
        self.inputs = inputs
        self.outputs = {name: spec.dtype.name for name, spec in outputs.items()}
        self.signature = signature
        self._use_flat_call(missing_columns(inputs, 2))
        self._warm_up(warmup_rows)
        self.load_seconds = round(time.perf_counter() - started, 3)

    def _warm_up(self, rows: int) -> None:
        # The first calls allocate and optimize (grappler); a batch of 1 and a full batch, a few times.
        for _ in range(WARMUP_ROUNDS):
            for size in sorted({1, max(1, rows)}):
                try:
                    self.run(missing_columns(self.inputs, size))
                except Exception as exc:
                    # A model that fails on every call (a sabotaged canary in a drill) still loads: the canary
                    # analysis is the judge, and users are answered by stable meanwhile.
                    self.warmup_error = describe_error(exc)
                    log.warning("version %s: the warm-up call failed: %s", self.version, self.warmup_error)
                    return

    def _use_flat_call(self, columns: dict[str, np.ndarray]) -> None:
        """Call the concrete function with its flat inputs when that answers exactly as the keyword call.

        A signature function's keyword call re-checks and re-flattens its arguments on every call: about
        0.2 ms of CPU, as much as the model itself at batch size 1. `_call_flat` is TensorFlow's own next
        step after that; it is private, so it is used only if it is there and agrees on a real call.
        """
        function = self._function
        names = list(getattr(function, "_arg_keywords", None) or [])
        if sorted(names) != sorted(self._dtypes) or not hasattr(function, "_call_flat"):
            return
        try:
            expected = self.run(columns)
            self._flat_names = names
            flat = self.run(columns)
        except Exception:  # a model that fails every call: keep the public call
            self._flat_names = None
            return
        same = set(flat) == set(expected) and all(
            np.array_equal(flat[k], expected[k], equal_nan=expected[k].dtype.kind == "f") for k in expected
        )
        if not same:
            log.warning(
                "version %s: the flat call disagrees with the keyword call; using the keyword call", self.version
            )
            self._flat_names = None

    def run(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The columns already have the signature's dtypes (validation made them), so tf.constant needs no cast.
        if self._flat_names is not None:
            function = self._function
            outputs = function._call_flat(
                [tf.constant(columns[name]) for name in self._flat_names], function.captured_inputs
            )
        else:
            outputs = self._function(**{name: tf.constant(columns[name]) for name in self._dtypes})
        return {name: value.numpy() for name, value in outputs.items()}

    def same_inputs(self, other: ModelVersion) -> str | None:
        """None when `other` takes the same inputs; else what differs."""
        if self.inputs == other.inputs:
            return None
        missing = sorted(set(other.inputs) - set(self.inputs))
        extra = sorted(set(self.inputs) - set(other.inputs))
        changed = sorted(n for n in set(self.inputs) & set(other.inputs) if self.inputs[n] != other.inputs[n])
        parts = []
        if missing:
            parts.append(f"lacks {missing}")
        if extra:
            parts.append(f"adds {extra}")
        if changed:
            parts.append(
                "changes dtypes of " + ", ".join(f"{n} ({other.inputs[n]} -> {self.inputs[n]})" for n in changed)
            )
        return "; ".join(parts)

    def metadata(self, model_name: str) -> dict[str, Any]:
        """TF Serving's GetModelMetadata answer: the SavedModel's signature defs as JSON."""
        defs = {
            key: json_format.MessageToDict(value, preserving_proto_field_name=True, including_default_value_fields=True)
            for key, value in self._signature_defs.items()
        }
        return {
            "model_spec": {"name": model_name, "signature_name": "", "version": self.version},
            "metadata": {"signature_def": {"signature_def": defs}},
        }

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"version": self.version, "model_uri": self.model_uri, "state": self.state}
        if self.warmup_error:
            entry["warmup_error"] = self.warmup_error
        return entry

    def release(self) -> None:
        self.state = END
        self.executor.shutdown(wait=True)
        self._function = None
        self._loaded = None
