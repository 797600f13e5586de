"""The model server: TensorFlow Serving's REST API over our SavedModels, with a sticky canary split.

- `server`: the aiohttp application (predict, status, metadata, health, metrics, admin API);
- `models`: a loaded SavedModel version (its `serving_default` signature, warm-up, model thread);
- `batching`: concurrent requests' rows batched into one model call per version;
- `validation`: a request checked against the signature, every problem a 4xx naming the field;
- `routing`: the stable/canary routing table and the sticky hash split;
- `metrics`, `request_log`: Prometheus metrics and the sampled request/prediction log;
- `loadgen`: an open-loop load generator replaying held-out trips (no TensorFlow);
- `sabotage`: deliberately broken models with the same signature, for drills and tests.

`python -m tfpipe serve ...` starts the server; only `server`, `models` and `sabotage` import TensorFlow.
"""
