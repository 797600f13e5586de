"""MLflow as the model registry and the lineage record of every training run.

One MLflow run per Airflow run, found again by its `tfpipe.run_key` tag, so a retried or cleared task
updates the run an earlier attempt made instead of adding another. The run holds the lineage: data
span and fingerprint, code version, schema, config and transform, hyperparameters, training and sliced
evaluation metrics, the blessing and the approval. A blessed model's SavedModel is uploaded into its
run's artifacts (`model/`) and registered as a version tagged with the same lineage and aliased
`challenger`; the rollout moves `champion` to the version that serves. Versions that have served are
tagged `tfpipe.served=true`, so a champion alias that went missing is noticed, never taken for a
first model.

Where things live is decided by the tracking URI alone: a plain path or `sqlite:///` URI is a SQLite
file (model files next to it unless an artifact root is given), `http(s)://` an MLflow server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import requests
import sqlalchemy.exc
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from tfpipe import artifacts
from tfpipe.errors import DataError, StageError, TfpipeError, TransientError
from tfpipe.evaluation.gate import Baseline

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT_PATH = "model"
SAVED_MODEL_FILE = "saved_model.pb"

RUN_KEY_TAG = "tfpipe.run_key"
SERVED_TAG = "tfpipe.served"
BLESSING_TAG = "tfpipe.blessing"
APPROVAL_TAG_PREFIX = "tfpipe.approval."
PARAMS_CHANGED_TAG = "tfpipe.params_changed"
# On the registered model: every change of champion (promotions and rollbacks), as JSON, newest last.
HISTORY_TAG = "tfpipe.deployment_history"
HISTORY_LENGTH = 20
# MLflow refuses longer tag values on some stores.
HISTORY_MAX_CHARS = 5000
# Lineage fields, each kept as the run tag `tfpipe.<field>`.
LINEAGE_FIELDS = (
    "data_span",
    "data_fingerprint",
    "code_version",
    "schema_sha256",
    "config_sha256",
    "transform_fingerprint",
    "blessing",
    "baseline_state",
    "baseline_version",
)
# What a registered version copies from its run, so the version alone says where it came from.
VERSION_TAGS = (
    RUN_KEY_TAG,
    "tfpipe.data_span",
    "tfpipe.data_fingerprint",
    "tfpipe.code_version",
    "tfpipe.transform_fingerprint",
    BLESSING_TAG,
)

# MLflow's error codes for failures a retry can get past (its default code, INTERNAL_ERROR, is also
# what a refused connection to the server raises).
_TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
)
# MLflow accepts letters, digits and `_ . - : /` and spaces in metric names; `/` is left out here
# because MLflow also refuses names that change when read as a path.
_METRIC_NAME_UNSAFE = re.compile(r"[^\w.\- :]+")
# Batch limits of MLflow's log_batch.
_METRICS_PER_BATCH = 1000
_PARAMS_OR_TAGS_PER_BATCH = 100

Method = TypeVar("Method", bound=Callable[..., Any])


def normalize_tracking_uri(uri: str) -> str:
    """`sqlite:///<absolute path>` for a plain path or a SQLite URI, with its folder created; others as given.

    A plain path names the SQLite file, or a folder to keep `mlflow.db` in when it is one (or has no
    file suffix). Relative paths are made absolute so every process finds the same file.
    """
    if "://" not in uri:
        path = Path(uri).expanduser()
        if path.is_dir() or not path.suffix:
            path = path / "mlflow.db"
        query = ""
    elif uri.startswith("sqlite:///"):
        text, _, query = uri.removeprefix("sqlite:///").partition("?")
        path = Path(text)
    else:
        return uri
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0])


def metric_name(*parts: str) -> str:
    """A metric name MLflow accepts: a slice's `=` becomes `:`, a cross's `&` `__`, anything else odd `_`."""
    text = ".".join(parts).replace("=", ":").replace("&", "__")
    return _METRIC_NAME_UNSAFE.sub("_", text)[:250]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _quoted(value: str, what: str) -> str:
    # MLflow's filter strings have no escape for quotes; our keys and names never need one.
    if "'" in value or "\\" in value:
        raise StageError(f"{what} {value!r} may not contain quotes or backslashes")
    return f"'{value}'"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | ConnectionError
        | TimeoutError,
    )


def _talks_to_mlflow(action: str) -> Callable[[Method], Method]:
    """Turn a failure to reach MLflow into a TransientError, so the Airflow task retries."""

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        def wrapper(self: ModelRegistry, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except TfpipeError:
                raise
            except Exception as exc:
                if _is_transient(exc):
                    raise TransientError(f"MLflow at {self.tracking_uri} could not {action}: {exc}") from exc
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def _require(uri: str, what: str) -> None:
    if not artifacts.exists(uri):
        raise DataError(f"{what} not found: {uri}")


def _loadable_uri(source: str) -> str | None:
    """The source as TensorFlow opens it (a local path or gs://), or None when it cannot."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "":
        return source
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme == "gs":
        return source
    return None


@contextlib.contextmanager
def _local_copy(uri: str) -> Iterator[Path]:
    """A file or folder as a local path: MLflow uploads local files, so a remote one is copied first."""
    if not artifacts.is_remote(uri):
        yield artifacts.local_path(uri)
        return
    import tensorflow as tf

    gfile = tf.io.gfile
    staging = Path(tempfile.mkdtemp(prefix="tfpipe-registry-"))
    try:
        top = uri.rstrip("/")
        target = staging / top.rsplit("/", 1)[-1]
        if gfile.isdir(top):
            for folder, _, files in gfile.walk(top):
                local_folder = target / folder.rstrip("/")[len(top) :].strip("/")
                local_folder.mkdir(parents=True, exist_ok=True)
                for name in files:
                    gfile.copy(artifacts.join(folder, name), str(local_folder / name), overwrite=True)
        else:
            gfile.copy(top, str(target), overwrite=True)
        yield target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def training_figures(training_metrics: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, step) of the train stage's metrics.json: its scalar figures, and loss per epoch."""
    figures = [
        (metric_name(key), float(value), 0) for key, value in sorted(training_metrics.items()) if _is_number(value)
    ]
    for epoch in training_metrics.get("epochs") or []:
        step = int(epoch["epoch"])
        for key, name in (("loss", "loss"), ("seconds", "epoch_seconds")):
            if _is_number(epoch.get(key)):
                figures.append((name, float(epoch[key]), step))
    return figures


def evaluation_figures(evaluation: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, 0) of each slice's candidate metrics: `eval.overall.auc`, `eval.payment_type:Cash.auc`."""
    figures: list[tuple[str, float, int]] = []
    named: dict[str, tuple[str, str]] = {}
    for entry in evaluation.get("slices", []):
        slice_name = str(entry.get("slice"))
        label = "overall" if slice_name == "Overall" else slice_name
        for metric, value in sorted((entry.get("candidate") or {}).items()):
            if not _is_number(value):
                continue
            name = metric_name("eval", label, metric)
            if name in named and named[name] != (slice_name, metric):
                # Two slices that differ only in characters MLflow refuses; the evaluation file keeps both.
                log.warning(
                    "metric %s of slice %r would overwrite slice %r: not logged", metric, slice_name, named[name][0]
                )
                continue
            named[name] = (slice_name, metric)
            figures.append((name, float(value), 0))
    return figures


class ModelRegistry:
    """The MLflow tracking store and model registry behind one tracking URI."""

    def __init__(self, tracking_uri: str, artifact_root: str | None = None, experiment: str = "chicago_taxi") -> None:
        self.tracking_uri = normalize_tracking_uri(tracking_uri)
        if artifact_root:
            if not artifacts.is_remote(artifact_root):
                artifact_root = os.path.abspath(artifacts.local_path(artifact_root))
        elif (database := sqlite_path(self.tracking_uri)) is not None:
            # MLflow's own default is ./mlruns of whichever folder the process starts in.
            artifact_root = str(database.parent / "artifacts")
        self.artifact_root = artifact_root or None
        self.experiment = experiment
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id: str | None = None

    # -- the experiment and the run of an Airflow run ------------------------------------------------

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._find_or_create_experiment()
        return self._experiment_id

    def _find_or_create_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return self.client.create_experiment(self.experiment, artifact_location=self.artifact_root)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(self.experiment)  # another process made it first
                assert found is not None
        if found.lifecycle_stage != "active":
            raise StageError(
                f"MLflow experiment {self.experiment!r} at {self.tracking_uri} is deleted: restore it or choose another"
            )
        if self.artifact_root and found.artifact_location.rstrip("/") != self.artifact_root.rstrip("/"):
            log.warning(
                "experiment %r keeps its artifacts at %s, not %s: the location is fixed when an experiment is created",
                self.experiment,
                found.artifact_location,
                self.artifact_root,
            )
        return found.experiment_id

    def _run_of(self, run_key: str) -> Run:
        """The MLflow run of an Airflow run: the one an earlier attempt made, or a new one."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = {_quoted(run_key, 'run key')}",
            order_by=["attributes.start_time ASC"],
            max_results=10,
        )
        if runs:
            if len(runs) > 1:
                log.warning("%d MLflow runs carry run key %s; updating the first", len(runs), run_key)
            log.info("updating MLflow run %s of run key %s", runs[0].info.run_id, run_key)
            return runs[0]
        # The key is set as the run is created, so an attempt that dies right after still leaves it findable.
        run = self.client.create_run(self.experiment_id, tags={RUN_KEY_TAG: run_key}, run_name=run_key)
        log.info("created MLflow run %s for run key %s", run.info.run_id, run_key)
        return run

    def _log_batches(
        self, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
    ) -> None:
        for chunk in _chunks(metrics, _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(params, _PARAMS_OR_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(tags, _PARAMS_OR_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk)

    def _unlogged(self, run: Run, figures: list[tuple[str, float, int]]) -> list[Metric]:
        """The figures the run does not hold yet: logging the same value again would add a history entry."""
        latest = run.data.metrics
        stepped = {name for name, _, step in figures if step != 0 and name in latest}
        history = {
            name: [(entry.step, entry.value) for entry in self.client.get_metric_history(run.info.run_id, name)]
            for name in stepped
        }
        now = int(time.time() * 1000)
        unlogged = []
        for name, value, step in figures:
            if name in history:
                if any(s == step and _same_value(v, value) for s, v in history[name]):
                    continue
            elif name in latest and step == 0 and _same_value(latest[name], value):
                continue
            unlogged.append(Metric(name, value, now, step))
        return unlogged

    # -- public API ----------------------------------------------------------------------------------

    @_talks_to_mlflow("record the training run")
    def record_run(
        self,
        *,
        run_key: str,
        data_span: str,
        data_fingerprint: str,
        code_version: str,
        schema_path: str,
        config_path: str,
        transform_uri: str,
        hyperparameters: dict[str, Any],
        training_metrics: dict[str, Any],
        evaluation: dict[str, Any],
        blessing: dict[str, Any],
        approval: dict[str, Any] | None = None,
    ) -> str:
        """Record one training run's lineage; a second call with the same run key updates the same run."""
        for uri, what in ((schema_path, "schema"), (config_path, "pipeline config"), (transform_uri, "transform")):
            _require(uri, what)
        transform = artifacts.read_json(transform_uri)
        if not transform.get("fingerprint"):
            raise DataError(f"{transform_uri}: the transform has no 'fingerprint'")
        decision = _decision(blessing)
        baseline = blessing.get("baseline") or {}
        lineage = {
            "data_span": data_span,
            "data_fingerprint": data_fingerprint,
            "code_version": code_version,
            "schema_sha256": artifacts.sha256_of(schema_path),
            "config_sha256": artifacts.sha256_of(config_path),
            "transform_fingerprint": transform["fingerprint"],
            "blessing": decision,
            "baseline_state": baseline.get("state"),
            "baseline_version": baseline.get("version"),
        }
        tags = {f"tfpipe.{field}": str(value) for field, value in lineage.items() if value is not None}
        tags[RUN_KEY_TAG] = run_key
        for key, value in (approval or {}).items():
            if value is not None:
                tags[APPROVAL_TAG_PREFIX + key] = str(value)

        run = self._run_of(run_key)
        run_id = run.info.run_id
        params = {name: _param_value(value) for name, value in sorted(hyperparameters.items())}
        recorded = run.data.params
        changed = sorted(name for name, value in params.items() if name in recorded and recorded[name] != value)
        if changed:
            # MLflow never changes a logged param; the current values are in training/metrics.json.
            log.warning("run %s already records other values of %s; those stay as params", run_id, ", ".join(changed))
            tags[PARAMS_CHANGED_TAG] = ",".join(changed)
        metrics = self._unlogged(run, training_figures(training_metrics) + evaluation_figures(evaluation))
        self._log_batches(
            run_id,
            metrics=metrics,
            params=[Param(name, value) for name, value in params.items() if name not in recorded],
            tags=[RunTag(key, value) for key, value in sorted(tags.items())],
        )
        with _local_copy(schema_path) as schema, _local_copy(config_path) as config:
            self.client.log_artifact(run_id, str(schema), "lineage")
            self.client.log_artifact(run_id, str(config), "lineage")
        self.client.log_dict(run_id, transform, "lineage/transform.json")
        self.client.log_dict(run_id, training_metrics, "training/metrics.json")
        self.client.log_dict(run_id, evaluation, "evaluation/metrics.json")
        self.client.log_dict(run_id, blessing, "evaluation/blessing.json")
        self.client.set_terminated(run_id, "FINISHED")
        log.info("recorded run %s: %d new metric value(s), %s", run_id, len(metrics), decision)
        return run_id

    @_talks_to_mlflow("register the model")
    def register_candidate(self, model_name: str, run_id: str, run_key: str, model_uri: str) -> str:
        """Register a blessed run's SavedModel as a version aliased `challenger`; once per run key."""
        existing = self._versions(model_name, f"tags.`{RUN_KEY_TAG}` = {_quoted(run_key, 'run key')}")
        if existing:
            version = existing[0]
            log.info("version %s of %s is already registered for run key %s", version, model_name, run_key)
        else:
            run = self.client.get_run(run_id)
            if run.data.tags.get(RUN_KEY_TAG) != run_key:
                raise StageError(f"MLflow run {run_id} is not the run of run key {run_key}")
            if run.data.tags.get(BLESSING_TAG) != "BLESSED":
                raise StageError(f"MLflow run {run_id} is not blessed: only blessed models are registered")
            _require(artifacts.join(model_uri, SAVED_MODEL_FILE), "exported SavedModel")
            with _local_copy(model_uri) as folder:
                self.client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT_PATH)
            source = artifacts.join(run.info.artifact_uri, MODEL_ARTIFACT_PATH)
            self._ensure_registered_model(model_name)
            created = self.client.create_model_version(
                model_name,
                source,
                run_id=run_id,
                tags={key: run.data.tags[key] for key in VERSION_TAGS if key in run.data.tags},
                description=f"Trained by run {run_key}.",
            )
            version = str(created.version)
            log.info("registered version %s of %s from %s", version, model_name, source)
        self.client.set_registered_model_alias(model_name, CHALLENGER, version)
        return version

    @_talks_to_mlflow("promote the champion")
    def promote_to_champion(
        self, model_name: str, version: str, *, actor: str = "", run_key: str = "", reason: str = "promoted"
    ) -> str | None:
        """Make a version the champion, mark it as one that has served, and append the change to the
        model's deployment history. Returns the previous champion (None if there was none).

        Idempotent per run key: a retried task that already recorded its change records nothing twice."""
        return self._move_champion(
            model_name, str(version), event="promote", actor=actor, run_key=run_key, reason=reason
        )

    @_talks_to_mlflow("record the rollback")
    def record_rollback(self, model_name: str, version: str, *, actor: str, reason: str, run_key: str) -> str | None:
        """Point `champion` back at `version` after traffic moved to it, recording who, when and why."""
        if not reason.strip():
            raise StageError("a rollback needs a reason")
        return self._move_champion(
            model_name, str(version), event="rollback", actor=actor, run_key=run_key, reason=reason
        )

    def _require_version(self, model_name: str, version: str, purpose: str = "") -> None:
        try:
            self.client.get_model_version(model_name, version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise StageError(f"{model_name!r} has no version {version}{purpose}") from exc
            raise

    def _move_champion(self, model_name: str, version: str, *, event: str, actor: str, run_key: str, reason: str):
        self._require_version(model_name, version)
        history = self.deployment_history(model_name)
        if run_key and any(entry.get("run_key") == run_key and entry.get("event") == event for entry in history):
            done = next(e for e in history if e.get("run_key") == run_key and e.get("event") == event)
            log.info("run key %s already recorded its %s to version %s", run_key, event, done["version"])
            return done.get("previous")
        previous = self.client.get_registered_model(model_name).aliases.get(CHAMPION)
        previous = str(previous) if previous is not None else None
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        entry = {
            "event": event,
            "version": version,
            "previous": previous,
            "at": now,
            "by": actor or "unknown",
            "reason": reason,
            "run_key": run_key,
        }
        # Marked first: a champion is never left without the mark that makes its loss noticeable.
        self.client.set_model_version_tag(model_name, version, SERVED_TAG, "true")
        done = "promoted" if event == "promote" else "restored"
        self.client.set_model_version_tag(model_name, version, f"tfpipe.{done}_at", now)
        self.client.set_model_version_tag(model_name, version, f"tfpipe.{done}_by", entry["by"])
        if event == "rollback":
            self.client.set_model_version_tag(model_name, version, "tfpipe.rollback_reason", reason)
            if previous is not None and previous != version:
                self.client.set_model_version_tag(model_name, previous, "tfpipe.rolled_back_at", now)
                self.client.set_model_version_tag(model_name, previous, "tfpipe.rolled_back_reason", reason)
        self.client.set_registered_model_alias(model_name, CHAMPION, version)
        # The history is kept on the registered model, newest last, bounded to stay within tag limits.
        history = [*history, entry][-HISTORY_LENGTH:]
        text = json.dumps(history, separators=(",", ":"))
        while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
            history = history[1:]
            text = json.dumps(history, separators=(",", ":"))
        self.client.set_registered_model_tag(model_name, HISTORY_TAG, text)
        log.info(
            "version %s of %s is the champion (%s by %s; before: %s)", version, model_name, event, entry["by"], previous
        )
        return previous

    @_talks_to_mlflow("read the deployment history")
    def deployment_history(self, model_name: str) -> list[dict[str, Any]]:
        """Every change of champion, oldest first: event, version, previous, at, by, reason, run_key."""
        try:
            registered = self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        text = registered.tags.get(HISTORY_TAG)
        if not text:
            return []
        try:
            history = json.loads(text)
        except json.JSONDecodeError:
            log.warning("the deployment history of %s is not JSON; starting a new one", model_name)
            return []
        return [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []

    @_talks_to_mlflow("find the rollback target")
    def rollback_target(self, model_name: str, version: str | None = None) -> Baseline:
        """The version a rollback moves traffic to: `version`, or by default the champion before the current one."""
        champion = self.find_baseline(model_name)
        if not version:
            current = champion.version
            earlier = [
                entry["version"]
                for entry in self.deployment_history(model_name)
                if entry.get("version") and entry["version"] != current
            ]
            if not earlier:
                raise StageError(
                    f"{model_name!r} has no previous champion to roll back to"
                    + (f" (version {current} is the only one that has served)" if current else "")
                    + ": name a target version"
                )
            version = earlier[-1]
        version = str(version)
        self._require_version(model_name, version, " to roll back to")
        model_uri = self.model_uri(model_name, version)
        return Baseline("rollback_target", version, model_uri, f"roll back to version {version} of {model_name!r}")

    @_talks_to_mlflow("find the model files")
    def model_uri(self, model_name: str, version: str) -> str:
        """Where TensorFlow can load a registered version's SavedModel (a local path or gs://)."""
        source = self.client.get_model_version_download_uri(model_name, str(version))
        model_uri = _loadable_uri(source)
        if model_uri is None:
            raise StageError(
                f"version {version} of {model_name!r} is stored at {source}, which TensorFlow cannot read: "
                "give the experiment a local or gs:// artifact root"
            )
        if not artifacts.exists(artifacts.join(model_uri, SAVED_MODEL_FILE)):
            raise DataError(f"version {version} of {model_name!r} has no SavedModel at {model_uri}")
        return model_uri

    @_talks_to_mlflow("look up the champion")
    def find_baseline(self, model_name: str) -> Baseline:
        """The model a candidate must beat: the champion, none for a first model, or what is missing."""
        try:
            registered = self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return Baseline("first_model", None, None, f"no model {model_name!r} is registered yet")
        champion = registered.aliases.get(CHAMPION)
        if champion is None:
            served = self._versions(model_name, f"tags.`{SERVED_TAG}` = 'true'")
            if served:
                return Baseline(
                    "missing",
                    None,
                    None,
                    f"version(s) {', '.join(served)} of {model_name!r} have served, but no version has the alias "
                    f"{CHAMPION!r}: point it at the serving version before another model is blessed",
                )
            return Baseline("first_model", None, None, f"no version of {model_name!r} has served yet")
        version = str(champion)
        source = self.client.get_model_version_download_uri(model_name, version)
        model_uri = _loadable_uri(source)
        if model_uri is None:
            return Baseline(
                "missing",
                version,
                None,
                f"champion version {version} of {model_name!r} is stored at {source}, which TensorFlow cannot "
                "read: give the experiment a local or gs:// artifact root",
            )
        if not artifacts.exists(artifacts.join(model_uri, SAVED_MODEL_FILE)):
            return Baseline(
                "missing",
                version,
                None,
                f"champion version {version} of {model_name!r} has no SavedModel at {model_uri}",
            )
        return Baseline("champion", version, model_uri, f"the champion is version {version} of {model_name!r}")

    @_talks_to_mlflow("read the lineage")
    def lineage(self, model_name: str, version: str) -> dict[str, Any]:
        """Where a version came from: its run's lineage tags and params, and the source of its files."""
        model_version = self.client.get_model_version(model_name, str(version))
        run = self.client.get_run(model_version.run_id) if model_version.run_id else None
        tags = dict(run.data.tags) if run else {}
        approval = {
            key.removeprefix(APPROVAL_TAG_PREFIX): value
            for key, value in tags.items()
            if key.startswith(APPROVAL_TAG_PREFIX)
        }
        return {
            "model_name": model_name,
            "version": str(model_version.version),
            "source": model_version.source,
            "aliases": sorted(model_version.aliases),
            "served": model_version.tags.get(SERVED_TAG) == "true",
            "version_tags": dict(model_version.tags),
            "run_id": model_version.run_id,
            "run_key": tags.get(RUN_KEY_TAG),
            "run_artifact_uri": run.info.artifact_uri if run else None,
            **{field: tags.get(f"tfpipe.{field}") for field in LINEAGE_FIELDS},
            "approval": approval or None,
            "params": dict(run.data.params) if run else {},
            "run_tags": {key: value for key, value in tags.items() if not key.startswith("mlflow.")},
        }

    # -- helpers ------------------------------------------------------------------------------------

    def _versions(self, model_name: str, condition: str) -> list[str]:
        found = self.client.search_model_versions(f"name = {_quoted(model_name, 'model name')} and {condition}")
        return sorted((str(item.version) for item in found), key=int)

    def _ensure_registered_model(self, model_name: str) -> None:
        try:
            self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                self.client.create_registered_model(model_name)
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":  # another process made it first
                    raise


def _decision(blessing: dict[str, Any]) -> str:
    blessed = blessing.get("blessed")
    if not isinstance(blessed, bool):
        raise DataError(f"the blessing has no true/false 'blessed': {json.dumps(blessing)[:200]}")
    decision = "BLESSED" if blessed else "NOT_BLESSED"
    if blessing.get("decision", decision) != decision:
        raise DataError(f"the blessing says blessed={blessed} but decision={blessing.get('decision')!r}")
    return decision
