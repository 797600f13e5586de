"""One config file per pipeline, validated into typed objects when a DAG file is parsed.

The loader reads YAML, expands `${NAME}` and `${NAME:-default}` from the environment (so one file
serves the laptop and production), resolves relative paths against the project root, and turns
every validation problem into a ConfigError that names the file and the dotted key at fault.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tfpipe.errors import ConfigError
from tfpipe.validation.expectations import ExpectationsConfig

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SLUG = r"^[a-z][a-z0-9_]*$"

Slug = Annotated[str, Field(pattern=_SLUG)]


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a threshold name must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_local(value: str, info: ValidationInfo) -> str:
    """Make a relative local path absolute against the project root; leave URIs alone."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


def _pinned_image(value: str) -> str:
    tag = value.rsplit("/", 1)[-1]
    if "@sha256:" not in value and (":" not in tag or tag.endswith(":latest")):
        raise ValueError(f"image {value!r} must be pinned to a version tag or digest, not latest")
    return value


# A local path (made absolute against the project root) or a URI such as gs://bucket/prefix.
PathOrUri = Annotated[str, AfterValidator(_resolve_local)]
PinnedImage = Annotated[str, AfterValidator(_pinned_image)]
# An optional path: an empty value (an unset ${VARIABLE:-}) means "not configured".
OptionalPathOrUri = Annotated[PathOrUri | None, BeforeValidator(lambda value: None if value == "" else value)]


class SpansConfig(_Model):
    """New data arrives in spans; a span is the unit of validation, training data and backfills."""

    granularity: Literal["monthly"] = "monthly"
    first: dt.date = Field(description="First day of the first span with data.")
    last: dt.date | None = Field(None, description="First day of the last span to schedule; open-ended if unset.")
    landing_timeout_hours: float = Field(72, gt=0, description="How long a scheduled run waits for its span to land.")
    landing_poke_minutes: float = Field(10, gt=0, description="How often it checks, holding no worker slot between.")

    @model_validator(mode="after")
    def _ordered(self) -> SpansConfig:
        if self.first.day != 1 or (self.last is not None and self.last.day != 1):
            raise ValueError("monthly spans start on the first day of a month")
        if self.last is not None and self.last < self.first:
            raise ValueError(f"last ({self.last}) is before first ({self.first})")
        return self


class DataConfig(_Model):
    sample_uri: OptionalPathOrUri = Field(None, description="Historical data the demo splits into the landing area.")
    landing_uri: PathOrUri = Field(description="Folder of spans: <landing_uri>/span=YYYY-MM/*.csv")
    format: Literal["csv"] = "csv"
    timestamp_column: str
    label: str


class ArtifactsConfig(_Model):
    root: PathOrUri = Field(
        description="Local folder or gs:// URI; artifacts go under <root>/<pipeline>/span=<span>/run=<run>."
    )


class LocalExecution(_Model):
    python: str = Field(description="Python interpreter of the ML runtime's virtual environment.")

    @field_validator("python")
    @classmethod
    def _python_path(cls, value: str, info: ValidationInfo) -> str:
        # A bare command name ("python3") is looked up on PATH at run time; a path is resolved now.
        return _resolve_local(value, info) if "/" in value else value


class ContainerResources(_Model):
    cpu: str = "2"
    memory: str = "8Gi"


class KubernetesExecution(_Model):
    image: PinnedImage
    namespace: str = "default"
    service_account_name: str | None = None
    kubernetes_conn_id: str = "kubernetes_default"
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    resources: ContainerResources = ContainerResources()
    startup_timeout_seconds: int = Field(600, gt=0)


class VertexAIExecution(_Model):
    project_id: str
    region: str
    image_uri: PinnedImage
    machine_type: str = "n1-standard-4"
    gcp_conn_id: str = "google_cloud_default"
    service_account: str | None = None
    impersonation_chain: list[str] | None = None
    poll_interval_seconds: int = Field(30, gt=0)


class ExecutionConfig(_Model):
    """Where ML stages run: the same stage command line in each mode."""

    mode: Literal["local", "kubernetes", "vertex_ai"] = "local"
    local: LocalExecution
    kubernetes: KubernetesExecution | None = None
    vertex_ai: VertexAIExecution | None = None

    @model_validator(mode="after")
    def _selected_mode_configured(self) -> ExecutionConfig:
        if getattr(self, self.mode) is None:
            raise ValueError(f"mode is {self.mode!r} but the {self.mode!r} section is missing")
        return self


class ComparatorConfig(_Model):
    """Drift or skew threshold of one feature: Jensen-Shannon divergence (numeric features) or
    L-infinity distance (categorical ones), and whether crossing it fails the run or warns."""

    threshold: float | None = Field(description="None: this feature is not compared.")
    severity: Literal["error", "warning"] = "warning"


class ComparisonConfig(_Model):
    min_examples: int = Field(
        200, ge=1, description="Below this many rows on either side a distance is noise: not judged, a warning says so."
    )
    features: dict[str, ComparatorConfig] = {}


class ValidationConfig(_Model):
    schema_path: PathOrUri = Field(description="The curated TFDV schema (text proto), reviewed like code.")
    training_environment: str = "TRAINING"
    serving_environment: str = "SERVING"
    drift: ComparisonConfig = ComparisonConfig()
    skew: ComparisonConfig = ComparisonConfig()
    serving_data_uri: OptionalPathOrUri = Field(
        None, description="Serving data (the model server's request log) to check training data against for skew."
    )
    split_skew: ComparisonConfig = Field(
        ComparisonConfig(), description="Skew of the evaluation split against the training split (training.split)."
    )
    histogram_buckets: int = Field(50, ge=2, description="Finer buckets make distances sensitive to real shifts.")
    beam_pipeline_args: list[str] = ["--runner=DirectRunner"]
    expectations: ExpectationsConfig = ExpectationsConfig()


class SplitConfig(_Model):
    """Split by time, relative to the run's span: the model is judged on data newer than any it learned from."""

    holdout_spans: int = Field(
        12, ge=1, description="The latest spans, ending at the run's span, held out for evaluation."
    )
    validation_spans: int = Field(
        3, ge=1, description="The spans just before the holdout: tuning trials are scored on them, then trained on."
    )
    window_spans: int | None = Field(
        None,
        ge=3,
        description="How many spans, ending at the run's span, the split reads; all since spans.first if unset.",
    )
    shards: int = Field(
        8, ge=1, description="Files per training split, so that each worker reads its own (tf.data FILE sharding)."
    )

    @model_validator(mode="after")
    def _window_holds_every_split(self) -> SplitConfig:
        if self.window_spans is not None and self.window_spans <= self.holdout_spans + self.validation_spans:
            raise ValueError(
                f"window_spans ({self.window_spans}) must exceed holdout_spans + validation_spans "
                f"({self.holdout_spans + self.validation_spans}), or nothing is left to train on"
            )
        return self


class Hyperparameters(_Model):
    """The model's knobs; each one may be searched over by `training.tuning.search_space`."""

    hidden: list[int] = Field([64, 32], min_length=1, description="Units of each hidden layer.")
    dropout: float = Field(0.3, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    l2: float = Field(1e-4, ge=0)
    wide: bool = Field(False, description="Add a linear part on the one-hot features and crosses (wide & deep).")
    batch_size: int = Field(256, ge=1, description="Global batch size, split across workers.")
    epochs: int = Field(8, ge=1)


class TuningConfig(_Model):
    """Hyperparameter search: one mapped Airflow task per trial, at most `pool.slots` at a time."""

    enabled: bool = True
    pool: str = Field("tfpipe_training", description="Airflow pool that bounds concurrent trials (and workers).")
    pool_slots: int = Field(2, ge=1, description="Size of the pool; `make airflow-init` creates it.")
    metric: Literal["auc"] = "auc"
    # Grid over these values (each key a Hyperparameters field); every other knob keeps its default.
    search_space: dict[str, list[Any]] = {}
    max_trials: int = Field(8, ge=1, description="A grid larger than this is refused, not silently cut.")

    @field_validator("search_space")
    @classmethod
    def _known_knobs(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        unknown = sorted(set(space) - set(Hyperparameters.model_fields))
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; known: {sorted(Hyperparameters.model_fields)}")
        empty = sorted(name for name, values in space.items() if not values)
        if empty:
            raise ValueError(f"no values to try for {empty}")
        for name, values in space.items():
            for value in values:
                Hyperparameters.model_validate({name: value})  # each value must be a valid setting
        return space

    def trials(self, base: Hyperparameters) -> list[Hyperparameters]:
        """Every combination of the search space, in a stable order; [base] if the space is empty."""
        names = sorted(self.search_space)
        combos = itertools.product(*(self.search_space[name] for name in names))
        return [base.model_copy(update=dict(zip(names, combo, strict=True))) for combo in combos]

    @model_validator(mode="after")
    def _bounded(self) -> TuningConfig:
        count = math.prod(len(values) for values in self.search_space.values())
        if count > self.max_trials:
            raise ValueError(f"the search space has {count} combinations, more than max_trials ({self.max_trials})")
        return self


class TrainingConfig(_Model):
    split: SplitConfig = SplitConfig()
    hyperparameters: Hyperparameters = Hyperparameters()
    tuning: TuningConfig = TuningConfig()
    workers: int = Field(2, ge=1, description="MultiWorkerMirroredStrategy workers (local: processes on loopback).")
    seed: int = 42
    memory_limit_mib: int | None = Field(
        None, ge=256, description="Per-worker resident memory cap; a worker above it stops the training with an error."
    )
    worker_timeout_seconds: int = Field(
        3600, gt=0, description="A training that runs longer is stopped (a hung collective must not hold the slot)."
    )
    tensorboard_url: str = Field(
        "http://localhost:6006",
        description="TensorBoard serving the artifact root (`make tensorboard`), for the task's link.",
    )

    @model_validator(mode="after")
    def _pool_holds_the_workers(self) -> TrainingConfig:
        if self.tuning.pool_slots < self.workers:
            raise ValueError(
                f"tuning.pool_slots ({self.tuning.pool_slots}) is less than workers ({self.workers}): "
                "the final training holds one slot per worker and could never start"
            )
        if self.split.shards < self.workers:
            raise ValueError(
                f"split.shards ({self.split.shards}) is less than workers ({self.workers}): "
                "each worker needs files of its own"
            )
        return self


EvaluationMetric = Literal["auc", "precision", "recall", "calibration", "log_loss", "example_count", "mean_label"]
# Metrics where a larger value is better; change thresholds of the others are rises, not drops.
HIGHER_IS_BETTER = frozenset({"auc", "precision", "recall"})


class MetricBounds(_Model):
    """Value thresholds (min, max) and change thresholds against the champion (max_drop, max_rise)."""

    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(None, ge=0, description="How far below the champion the candidate may be.")
    max_rise: float | None = Field(None, ge=0, description="How far above the champion the candidate may be.")

    @model_validator(mode="after")
    def _something_bounded(self) -> MetricBounds:
        if all(value is None for value in (self.min, self.max, self.max_drop, self.max_rise)):
            raise ValueError("a metric threshold needs at least one of min, max, max_drop, max_rise")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class SliceConfig(_Model):
    features: list[str] = Field([], description="One slice per value of each of these columns.")
    top_companies: int = Field(0, ge=0, description="A slice for each of the most frequent companies.")
    crosses: list[list[str]] = Field([], description="One slice per combination of values of these columns.")

    @field_validator("crosses")
    @classmethod
    def _pairs_or_more(cls, crosses: list[list[str]]) -> list[list[str]]:
        short = [cross for cross in crosses if len(cross) < 2]
        if short:
            raise ValueError(f"a cross needs two or more columns: {short}")
        return crosses


class EvaluationThresholds(_Model):
    overall: dict[EvaluationMetric, MetricBounds] = {}
    # Slice feature (or "a&b" for a cross) -> metric -> bounds, for every judged slice of that feature.
    per_slice: dict[str, dict[EvaluationMetric, MetricBounds]] = {}

    def count(self) -> int:
        return len(self.overall) + sum(len(metrics) for metrics in self.per_slice.values())


class EvaluationConfig(_Model):
    """The deployment gate: sliced TFMA metrics of the candidate, against thresholds and the champion."""

    model_name: Slug = Field(description="Registered model name in the model registry.")
    operating_threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability above which a trip is predicted a big tipper."
    )
    slices: SliceConfig = SliceConfig()
    min_slice_size: int = Field(
        50, ge=1, description="Slices with fewer examples are reported, not judged (their metrics are noise)."
    )
    required_slices: list[str] = Field(
        [],
        description="Slices (e.g. 'payment_type=Cash') that must have min_slice_size examples, or nothing is blessed.",
    )
    thresholds: EvaluationThresholds = EvaluationThresholds()
    approval: Literal["auto", "required"] = Field(
        "auto", description="'required': a person approves before traffic moves."
    )
    beam_pipeline_args: list[str] = ["--runner=DirectRunner"]
    in_process_below_rows: int = Field(
        50_000,
        ge=0,
        description="With a multi-process DirectRunner, smaller inputs are evaluated in the calling process: "
        "Beam's worker processes take seconds to start (TensorFlow import, model load) and only pay off above this.",
    )
    batch_size: int = Field(1000, ge=1, description="Rows per model call; TFMA's default starts at 1 and ramps up.")

    @model_validator(mode="after")
    def _thresholds_on_sliced_features(self) -> EvaluationConfig:
        known = set(self.slices.features) | {"&".join(cross) for cross in self.slices.crosses}
        if self.slices.top_companies:
            known.add("company")
        unknown = sorted(set(self.thresholds.per_slice) - known)
        if unknown:
            raise ValueError(f"thresholds.per_slice names {unknown}, which are not sliced on (slices: {sorted(known)})")
        return self


class RegistryConfig(_Model):
    tracking_uri: str = Field(
        description="MLflow tracking and registry URI: a SQLite file locally, http(s):// in production."
    )
    artifact_root: OptionalPathOrUri = Field(
        None, description="Where the registry keeps model files (folder or gs://)."
    )
    experiment: Slug = "chicago_taxi"

    @field_validator("tracking_uri")
    @classmethod
    def _absolute_sqlite(cls, value: str, info: ValidationInfo) -> str:
        # A relative SQLite path would depend on each process's working directory.
        if "://" not in value:
            return "sqlite:///" + _resolve_local(value, info)
        return value


class RequestLogConfig(_Model):
    """Requests and predictions the server logs for the monitoring DAG's skew, drift and quality checks."""

    dir: PathOrUri = Field(description="Folder of rotating JSON-lines files (requests.jsonl, requests.jsonl.1, ...).")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of requests logged (decided per request).")
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="Size at which a file is rotated.")
    backups: int = Field(10, ge=1, description="Rotated files kept.")


class LocalServingConfig(_Model):
    """Our model server (TensorFlow Serving's REST API): the embedded default deployment target."""

    host: str = "127.0.0.1"
    port: int = Field(8501, ge=0, le=65535, description="TF Serving's REST port.")
    conn_id: str = Field(
        "tfpipe_model_server", description="Airflow connection to the server: host, port, password = admin token."
    )
    admin_token_env: str = Field(
        "TFPIPE_SERVING_ADMIN_TOKEN",
        description="Environment variable the server reads its admin bearer token from; unset: admin API refused.",
    )
    sticky_header: str = Field("X-Request-Key", description="Request header a user's traffic split is sticky on.")
    max_batch_size: int = Field(64, ge=1, description="Concurrent requests' rows batched into one model call.")
    batch_timeout_ms: float = Field(
        1.0, ge=0, description="How long a batch waits for more rows once the model is free."
    )
    max_request_bytes: int = Field(1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_instances: int = Field(1000, ge=1, description="More instances in one request get 400.")
    request_log: RequestLogConfig


class VertexAIServingConfig(_Model):
    """A Vertex AI endpoint (providers-google): deploy model, traffic_split, undeploy."""

    project_id: str
    region: str
    endpoint_id: str = Field(description="The endpoint (created once, outside the pipeline) that serves the model.")
    machine_type: str = "n1-standard-2"
    min_replica_count: int = Field(1, ge=1)
    max_replica_count: int = Field(2, ge=1)
    serving_image_uri: Annotated[str, AfterValidator(_pinned_image)] = Field(
        description="Prediction container for uploaded models: our ML image, which runs the same model server."
    )
    image_config: str = Field(
        "/opt/tfpipe/dags/configs/chicago_taxi.yaml", description="This pipeline's config inside the serving image."
    )
    gcp_conn_id: str = "google_cloud_default"


class ServingConfig(_Model):
    target: Literal["local", "vertex_ai"] = "local"
    model_name: Slug = Field(description="The name clients use: POST /v1/models/<model_name>:predict.")
    local: LocalServingConfig
    vertex_ai: VertexAIServingConfig | None = None

    @model_validator(mode="after")
    def _target_configured(self) -> ServingConfig:
        if self.target == "vertex_ai" and self.vertex_ai is None:
            raise ValueError("target is vertex_ai but serving.vertex_ai is not configured")
        return self


class CanaryAnalysisConfig(_Model):
    """One analysis per step, over a window of live traffic, canary against stable (Argo Rollouts' model)."""

    window_seconds: float = Field(30, gt=0, description="Live traffic each analysis looks at.")
    poll_seconds: float = Field(5, gt=0, description="How often the trigger measures during a window.")
    min_requests: int = Field(100, ge=1, description="Fewer canary requests in a window: Inconclusive, not Successful.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary 5xx share above this: Failed.")
    max_p99_latency_ratio: float = Field(2.0, gt=0, description="Canary p99 over stable p99 above this: Failed.")
    p99_latency_slack_ms: float = Field(
        5.0, ge=0, description="p99 differences below this are never a failure (sub-millisecond noise)."
    )
    max_prediction_drift: float = Field(
        0.35, ge=0, le=1, description="Jensen-Shannon distance of canary vs stable prediction histograms: Failed."
    )
    failure_limit: int = Field(0, ge=0, description="Failed analyses tolerated before the rollout aborts.")
    error_limit: int = Field(
        2, ge=0, description="Measurement errors (metrics unreachable) tolerated, consecutive, before aborting."
    )
    inconclusive: Literal["wait_for_approval", "fail"] = Field(
        "fail", description="What an Inconclusive analysis does: ask a person, or abort."
    )


class RolloutConfig(_Model):
    steps: list[Annotated[int, Field(gt=0, le=100)]] = Field(
        [10, 25, 50, 100], description="Canary traffic percentages, in order; the last is 100."
    )
    analysis: CanaryAnalysisConfig = CanaryAnalysisConfig()
    approval_above_percent: Annotated[
        int | None, BeforeValidator(lambda value: None if value in ("", "null", "none") else value)
    ] = Field(None, ge=0, le=100, description="Widening the canary past this percentage needs a person's approval.")
    timeout_minutes: float = Field(60, gt=0, description="The whole rollout, approvals included.")

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100:
            raise ValueError("the last step must be 100 (the canary takes all traffic before promotion)")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase, got {steps}")
        return steps


class AlertsConfig(_Model):
    """Who hears about a run that needs a person: a candidate NOT BLESSED (and, later, production alerts)."""

    email: list[str] = Field([], description="Recipients; empty: nothing is sent, the task log still says why.")
    smtp_conn_id: str = Field("smtp_default", description="Airflow connection of the SMTP server.")
    from_email: str = "tfpipe@localhost"

    @field_validator("email", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # "${TFPIPE_ALERT_EMAIL:-}" arrives as one string: "a@x, b@y" or "".
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class AirflowConfig(_Model):
    owner: str = "ml-platform"
    retries: int = Field(1, ge=0)
    retry_delay_seconds: int = Field(60, ge=0)
    max_active_runs: int = Field(1, ge=1)
    tags: list[str] = []


class QuotaLimits(_Model):
    """How much may be held at once (cores, memory, accelerators) and spent per window (core-/GPU-hours).
    An unset resource is not limited."""

    cpu: float | None = Field(None, ge=0, description="Cores held at once.")
    memory_gib: float | None = Field(None, ge=0, description="Memory held at once, GiB.")
    gpu: float | None = Field(None, ge=0, description="GPUs (accelerators) held at once.")
    cpu_hours: float | None = Field(None, ge=0, description="Core-hours spent per `quota.window_hours`.")
    gpu_hours: float | None = Field(None, ge=0, description="GPU-hours spent per `quota.window_hours`.")

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.model_dump().items() if value is not None}


class StageQuotaRequest(_Model):
    """What one worker of one instance of a stage asks for; the check multiplies by workers and parallel trials."""

    cpu: float = Field(1, gt=0, description="Cores per worker.")
    memory_gib: float = Field(gt=0, description="Memory per worker, GiB.")
    gpu: int = Field(0, ge=0, description="GPUs (accelerators) per worker.")
    expected_minutes: float = Field(
        gt=0,
        description="Duration that core-/GPU-hours are charged for, until the usage history has `history.min_runs` "
        "runs of this stage (then its measured percentile is used).",
    )
    on_refusal: Literal["fail", "defer"] | None = Field(None, description="Overrides `quota.on_refusal`.")
    wait_timeout_minutes: float | None = Field(None, gt=0, description="Overrides `quota.wait_timeout_minutes`.")

    def per_worker(self) -> dict[str, float]:
        return {"cpu": self.cpu, "memory_gib": self.memory_gib, "gpu": float(self.gpu)}


class GcpQuotaConfig(_Model):
    """Google Cloud quotas the stages draw on, read through providers-google."""

    project_id: str
    region: str
    gcp_conn_id: str = "google_cloud_default"
    impersonation_chain: list[str] | None = None
    service: Literal["vertex_ai", "compute_engine"] = Field(
        "vertex_ai",
        description="Vertex AI custom training quotas (execution.mode vertex_ai), or Compute Engine regional quotas "
        "(GKE nodes, VMs).",
    )
    accelerator_type: str = Field("NVIDIA_TESLA_T4", description="The accelerator `gpu` requests are counted as.")


class QuotaLedgerConfig(_Model):
    conn_id: str = Field(
        "tfpipe_quota_ledger", description="Airflow connection of the ledger's database (sqlite or postgres)."
    )
    sqlite_fallback: OptionalPathOrUri = Field(
        None,
        description="SQLite file used, with a warning, when `conn_id` is not defined (the embedded default); "
        "unset: a missing connection is an error.",
    )


class QuotaHistoryConfig(_Model):
    percentile: float = Field(90, gt=0, le=100, description="Percentile of measured runs used as the estimate.")
    min_runs: int = Field(3, ge=1, description="Fewer measured runs: the configured expected_minutes is used.")
    max_runs: int = Field(50, ge=1, description="Only the latest runs count.")


class QuotaConfig(_Model):
    """Compute quota: a shared budget, this pipeline's cap, what each heavy stage asks for, and what a refusal does."""

    provider: Literal["local", "gcp"] = Field("local", description="Whose real capacity is checked first.")
    gcp: GcpQuotaConfig | None = None
    ledger: QuotaLedgerConfig = QuotaLedgerConfig()
    budget: QuotaLimits = Field(description="Shared by every pipeline on the ledger: declare the same in each config.")
    pipeline_cap: QuotaLimits = Field(description="The most this pipeline may hold, even when the budget has room.")
    window_hours: float = Field(24, gt=0, description="Window of the core-/GPU-hours limits (rolling).")
    lease_seconds: float = Field(
        300,
        ge=1,
        description="A running stage renews its reservation every third of this; a killed one frees it this long "
        "after its last renewal.",
    )
    start_within_minutes: float = Field(
        60,
        gt=0,
        description="How long a granted reservation waits for its stage to start (a pool slot, a retry) before it "
        "lapses.",
    )
    on_refusal: Literal["fail", "defer"] = Field(
        "defer", description="fail: at once, saying what was asked, what is free and who holds the rest; defer: wait."
    )
    wait_timeout_minutes: float = Field(120, gt=0, description="How long a deferred check waits before it fails.")
    poll_seconds: float = Field(30, gt=0, description="How often a deferred check asks again (in the triggerer).")
    alert_share: float = Field(0.8, gt=0, le=1, description="Alert once when use passes this share of a limit.")
    metrics_path: OptionalPathOrUri = Field(
        None, description="Prometheus textfile (node_exporter format) rewritten after each change; unset: none."
    )
    pool: str = Field(
        "tfpipe_compute",
        description="Airflow pool of guarded stages that have none; one slot per core, sized from budget.cpu.",
    )
    history: QuotaHistoryConfig = QuotaHistoryConfig()
    stages: dict[Slug, StageQuotaRequest] = Field(
        {}, description="Requests by stage: validate, tune_trial, train (per worker), evaluate, serve, ..."
    )

    @model_validator(mode="after")
    def _consistent(self) -> QuotaConfig:
        if self.provider == "gcp" and self.gcp is None:
            raise ValueError("provider is 'gcp' but the quota.gcp section is missing")
        budget, cap = self.budget.as_dict(), self.pipeline_cap.as_dict()
        above = sorted(name for name, value in cap.items() if name in budget and value > budget[name])
        if above:
            raise ValueError(f"pipeline_cap is above the shared budget for {above}: the cap could never be reached")
        for stage, request in self.stages.items():
            for name, value in request.per_worker().items():
                limit = min(budget.get(name, math.inf), cap.get(name, math.inf))
                if value > limit:
                    raise ValueError(
                        f"stages.{stage} asks for {name} {value:g} per worker, more than the budget or cap allows "
                        f"({limit:g}): it could never run"
                    )
        return self

    def request_for(self, stage: str) -> StageQuotaRequest:
        if stage not in self.stages:
            raise KeyError(f"quota.stages has no request for {stage!r} (configured: {sorted(self.stages)})")
        return self.stages[stage]


# An optional name: an empty value (an unset ${VARIABLE:-}) means "not configured".
OptionalText = Annotated[str | None, BeforeValidator(lambda value: None if value == "" else value)]


class MonitoredFeature(_Model):
    """Skew or drift thresholds of one feature in the monitoring DAG: Jensen-Shannon divergence (numeric)
    or L-infinity distance (categorical), as in `validation`."""

    threshold: float | None = Field(description="Above this an alert is raised; None: this feature is not compared.")
    retrain: float | None = Field(
        None, description="Above this the monitoring DAG also asks for retraining (the retraining asset event)."
    )
    severity: Literal["critical", "warning"] = "warning"

    @model_validator(mode="after")
    def _retrain_above_alert(self) -> MonitoredFeature:
        if self.retrain is not None and self.threshold is not None and self.retrain < self.threshold:
            raise ValueError(
                f"retrain ({self.retrain}) is below threshold ({self.threshold}): it would retrain without alerting"
            )
        return self


class MonitoredComparison(_Model):
    min_examples: int = Field(
        200, ge=1, description="Fewer logged rows of a version in a window: its distances are noise, not judged."
    )
    features: dict[str, MonitoredFeature] = {}


class DataQualityMonitoring(_Model):
    """Missing, corrupted and out-of-domain values of the features the server was sent, per version."""

    max_missing_increase: float = Field(
        0.10, ge=0, le=1, description="Missing share above the training data's own share by more than this."
    )
    max_out_of_domain_share: float = Field(
        0.01, ge=0, le=1, description="Values outside the schema's domain (range, known categories)."
    )
    max_corrupted_share: float = Field(
        0.001, ge=0, le=1, description="Logged values of the wrong type or not finite (the log is not trusted)."
    )
    max_rejected_share: float = Field(
        0.05, ge=0, le=1, description="Requests the server refused as malformed (4xx), from its metrics."
    )
    min_examples: int = Field(100, ge=1)


class PredictionMonitoring(_Model):
    max_drift: float = Field(
        0.10, ge=0, le=1, description="Jensen-Shannon divergence of the window's predictions from the evaluation set's."
    )
    retrain_drift: float | None = Field(None, ge=0, le=1, description="Prediction drift that asks for retraining.")
    max_positive_share_change: float = Field(
        0.10,
        ge=0,
        le=1,
        description="Quality proxy without labels: absolute change of the share of trips predicted big tippers, "
        "against the evaluation set at training time and against the previous window.",
    )
    min_examples: int = Field(200, ge=1)


class ServiceMonitoring(_Model):
    max_p50_ms: float = Field(25.0, gt=0, description="Median request latency, per version.")
    max_p99_ms: float = Field(150.0, gt=0, description="99th percentile request latency, per version.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Share of requests answered 5xx, per version.")
    min_requests: int = Field(100, ge=1, description="Fewer requests of a version in a window: not judged.")


class OutageMonitoring(_Model):
    probe_timeout_seconds: float = Field(5.0, gt=0, description="GET /readyz and /metrics give up after this.")
    expect_traffic: Literal["learned", "always", "never"] = Field(
        "learned",
        description="When a window without predictions is an outage: learned from the previous windows' traffic, "
        "always, or never.",
    )
    expected_min_requests: int = Field(
        100, ge=1, description="Previous windows averaging at least this many requests mean traffic is expected."
    )
    min_traffic_share: float = Field(
        0.1, ge=0, le=1, description="Fewer successful predictions than this share of the expected traffic: outage."
    )
    history_windows: int = Field(6, ge=1, description="Previous windows the expected traffic is learned from.")
    max_gap_minutes: float = Field(
        10.0, gt=0, description="Longest stretch without a logged prediction inside a window that has traffic."
    )


class LabelMonitoring(_Model):
    """The real AUC once labels arrive: served trips are joined to labelled trips by a fingerprint of their features."""

    uri: OptionalPathOrUri = Field(
        None, description="Labelled trips (CSV file or folder, searched recursively); unset: the landing area."
    )
    lookback_hours: float = Field(
        24 * 45, gt=0, description="How long after a window its labels may still arrive and be joined."
    )
    min_labeled: int = Field(200, ge=1, description="Fewer joined trips of a version in a window: AUC not judged.")
    min_auc: float | None = Field(
        None, ge=0, le=1, description="Unset: evaluation.thresholds.overall.auc.min, when configured."
    )
    max_auc_drop: float = Field(0.03, ge=0, le=1, description="Below the AUC measured at training time by more.")


class TrainingHealthMonitoring(_Model):
    max_duration_ratio: float = Field(
        2.0, gt=1, description="A training run slower than this many times the median of the previous ones."
    )
    history_runs: int = Field(10, ge=1)
    min_history: int = Field(3, ge=1, description="Fewer previous training runs: the duration is not judged.")
    alert_on_failed_runs: bool = Field(True, description="Alert when training runs failed since the last window.")
    max_quota_utilization: float = Field(
        0.9, gt=0, le=1, description="Used share of a quota limit (the quota ledger's metrics export)."
    )


class MonitoringAlertsConfig(_Model):
    """Where alerts go (each channel only when configured) and how often the same alert may repeat."""

    cooldown_minutes: float = Field(
        240, ge=0, description="The same alert is not sent again sooner; a rise to critical is sent at once."
    )
    email: bool = Field(True, description="Send to `alerts.email` through `alerts.smtp_conn_id` (when recipients).")
    slack_conn_id: OptionalText = Field(
        None, description="Airflow connection holding a Slack incoming-webhook URL (host, or password as the URL)."
    )
    webhook_conn_id: OptionalText = Field(
        None, description="Airflow connection of a generic JSON webhook (host = URL, password = bearer token)."
    )
    report_base_url: OptionalText = Field(
        None,
        description="Prefix of report links in alerts (e.g. https://airflow.example.com/tfpipe/artifacts); unset: "
        "the artifact viewer under Airflow's [api] base_url, else the report's URI.",
    )
    runbook_url: str = Field(
        "docs/runbook.md", description="The runbook; each alert links to its section (#anchor) in it."
    )


class MonitoringConfig(_Model):
    """The monitoring DAG: the model server's request log and metrics, per window, against the training data."""

    schedule: str = Field("@hourly", description="Cron expression or preset; each run monitors its data interval.")
    start_date: dt.datetime = Field(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC), description="The first window; earlier ones are never scheduled."
    )
    request_log_dir: OptionalPathOrUri = Field(
        None, description="The server's request log folder; unset: serving.local.request_log.dir."
    )
    state_uri: OptionalPathOrUri = Field(
        None, description="Window summaries, statistics and caches; unset: <artifacts.root>/<pipeline>/monitoring."
    )
    sample_mib: float = Field(
        128,
        gt=0,
        description="JSON read per window at most; a larger window is read as an even sample of whole blocks "
        "(statistics, latency and rates are estimated from it and say so).",
    )
    skew: MonitoredComparison = MonitoredComparison()
    drift: MonitoredComparison = MonitoredComparison()
    data_quality: DataQualityMonitoring = DataQualityMonitoring()
    predictions: PredictionMonitoring = PredictionMonitoring()
    service: ServiceMonitoring = ServiceMonitoring()
    outage: OutageMonitoring = OutageMonitoring()
    labels: LabelMonitoring = LabelMonitoring()
    training: TrainingHealthMonitoring = TrainingHealthMonitoring()
    alerts: MonitoringAlertsConfig = MonitoringAlertsConfig()

    @field_validator("start_date")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class PipelineConfig(_Model):
    pipeline: Slug
    description: str = ""
    spans: SpansConfig
    data: DataConfig
    artifacts: ArtifactsConfig
    validation: ValidationConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig | None = None
    registry: RegistryConfig | None = None
    serving: ServingConfig | None = None
    rollout: RolloutConfig = RolloutConfig()
    execution: ExecutionConfig
    alerts: AlertsConfig = AlertsConfig()
    airflow: AirflowConfig = AirflowConfig()
    quota: QuotaConfig | None = Field(None, description="Compute quota checks before heavy stages; unset: none.")
    monitoring: MonitoringConfig | None = Field(None, description="The monitoring DAG; unset: no monitoring.")
    source_path: str | None = Field(None, description="The file this config was loaded from (set by the loader).")


def expand_environment(value: Any, environ: dict[str, str] | os._Environ = os.environ) -> Any:
    """Expand ${NAME} and ${NAME:-default} in every string of a loaded YAML document."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set and has no default")

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {key: expand_environment(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_environment(item, environ) for item in value]
    return value


def project_root_for(config_path: Path) -> Path:
    """The folder holding `dags/`, or the config's own folder when it lives elsewhere."""
    override = os.environ.get("TFPIPE_PROJECT_ROOT")
    if override:
        return Path(override)
    for parent in config_path.resolve().parents:
        if parent.name == "dags":
            return parent.parent
    return config_path.resolve().parent


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif "input" in item and item["type"] not in ("missing",) and not isinstance(item["input"], dict):
            message = f"{message} (got {item['input']!r})"
        lines.append(f"  - {key}: {message}")
    return f"{path}: invalid pipeline config:\n" + "\n".join(lines)


def load_pipeline_config(
    path: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None
) -> PipelineConfig:
    """Load and validate one pipeline's config file. Raises ConfigError naming the bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pipeline config: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a pipeline config must be a mapping of keys, got {type(document).__name__}")
    try:
        document = expand_environment(document)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    document["source_path"] = str(path.resolve())
    base = Path(base_dir) if base_dir is not None else project_root_for(path)
    try:
        return PipelineConfig.model_validate(document, context={"base_dir": base})
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
