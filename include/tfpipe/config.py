"""One config file per pipeline, validated into typed objects when a DAG file is parsed.

The loader reads YAML, expands `${NAME}` and `${NAME:-default}` from the environment (so one file
serves the laptop and production), resolves relative paths against the project root, and turns
every validation problem into a ConfigError that names the file and the dotted key at fault.
"""

from __future__ import annotations

import datetime as dt
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
    histogram_buckets: int = Field(50, ge=2, description="Finer buckets make distances sensitive to real shifts.")
    beam_pipeline_args: list[str] = ["--runner=DirectRunner"]
    expectations: ExpectationsConfig = ExpectationsConfig()


class AirflowConfig(_Model):
    owner: str = "ml-platform"
    retries: int = Field(1, ge=0)
    retry_delay_seconds: int = Field(60, ge=0)
    max_active_runs: int = Field(1, ge=1)
    tags: list[str] = []


class PipelineConfig(_Model):
    pipeline: Slug
    description: str = ""
    spans: SpansConfig
    data: DataConfig
    artifacts: ArtifactsConfig
    validation: ValidationConfig
    execution: ExecutionConfig
    airflow: AirflowConfig = AirflowConfig()
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
