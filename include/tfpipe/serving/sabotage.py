"""Deliberately broken models with the real model's `serving_default` signature, for drills and tests.

- `constant`: answers the same probability (default 0.5) for every trip: a model that "works" but has
  learned nothing; only the prediction drift check can catch it.
- `error`: fails every call at run time (a check that never holds), the way a model with a bad op or an
  incompatible input would: the canary's errors, counted while stable answers the users.

Both take the same inputs (names, dtypes, shapes) and return the same output names as the source model,
so the server loads them like any other version. Writing one takes seconds: no Keras, no variables.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

MODES = ("constant", "error")
SIGNATURE = "serving_default"


class _Sabotaged(tf.Module):
    pass


def sabotage(source_uri: str, output_uri: str, mode: str, value: float = 0.5) -> dict:
    """Write a sabotaged SavedModel to `output_uri`; returns its inputs and outputs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"the constant must be a probability in [0, 1], got {value}")
    loaded = tf.saved_model.load(source_uri)
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{source_uri} has no {SIGNATURE!r} signature")
    source = loaded.signatures[SIGNATURE]
    _, inputs = source.structured_input_signature
    outputs = source.structured_outputs
    spec = {name: tf.TensorSpec(s.shape, s.dtype, name=name) for name, s in inputs.items()}
    first = sorted(spec)[0]

    @tf.function(input_signature=[spec])
    def serve(features):
        batch = tf.shape(features[first])[:1]
        result = {}
        for name, out in outputs.items():
            shape = tf.concat([batch, tf.constant(out.shape[1:].as_list(), tf.int32)], 0)
            result[name] = tf.cast(tf.fill(shape, value), out.dtype)
        if mode == "error":
            # The batch size is only known at call time, so this fails on every call, never at tracing.
            check = tf.debugging.Assert(
                tf.less(batch[0], 0), ["sabotaged model: this model fails every call (tfpipe sabotage-model)"]
            )
            with tf.control_dependencies([check]):
                result = {name: tf.identity(t) for name, t in result.items()}
        return result

    module = _Sabotaged()
    module.serve = serve
    tf.saved_model.save(module, output_uri, signatures={SIGNATURE: serve.get_concrete_function()})
    return {
        "inputs": {name: s.dtype.name for name, s in inputs.items()},
        "outputs": {name: s.dtype.name for name, s in outputs.items()},
    }
