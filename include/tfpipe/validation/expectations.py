"""Great Expectations rules for what TFDV's schema does not express well.

TFDV checks each column on its own (types, domains, presence, drift). Row-count bounds, compound
uniqueness, cross-column rules (tips <= k * fare) and freshness against the run's span are dataset
rules, so they run here as a GX Core 1.x suite: an in-memory data context, a pandas dataframe asset,
a validation definition and a checkpoint whose action writes static Data Docs under `output_dir`.
Each failed expectation becomes one Finding, so the stage reports them like every other check.

Great Expectations is imported inside `run_expectations` only: the config models must stay
importable where GX is not installed (DAG parsing), and importing GX alone takes seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tfpipe.validation.findings import Finding, Severity

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_EXAMPLES = 5  # unexpected values GX collects per expectation (kept in Finding.details)
_EXAMPLES_IN_MESSAGE = 3
_SITE = "tfpipe"


def _mostly() -> Any:
    return Field(1.0, ge=0.0, le=1.0, description="Fraction of the checked rows that must pass.")


class _Model(BaseModel):
    # tfpipe.config's base, repeated so that config.py can import this module without an import cycle.
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Rule(_Model):
    severity: Severity = "error"


class RowCountRule(_Rule):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounded(self) -> RowCountRule:
        if self.min is None and self.max is None:
            raise ValueError("row_count needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"row_count min ({self.min}) is above max ({self.max})")
        return self


class UniqueRule(_Rule):
    """Rows are unique on these columns taken together; an empty value equals another empty value."""

    columns: list[str] = Field(min_length=1)
    mostly: float = _mostly()


class AtMostMultipleRule(_Rule):
    """`column` <= `factor` * `of`, row by row; rows missing either value are skipped."""

    column: str
    of: str
    factor: float = Field(gt=0)
    mostly: float = _mostly()


class FreshnessRule(_Rule):
    """Values of `column` (Unix seconds) lie in the run's span [start, end); empty values are skipped."""

    column: str
    mostly: float = _mostly()


class NonNegativeRule(_Rule):
    """Values of each column are >= 0; empty values are skipped."""

    columns: list[str] = Field(min_length=1)
    mostly: float = _mostly()


class ExpectationsConfig(_Model):
    """The dataset rules of one pipeline; each is optional, and each fails with severity error unless set."""

    row_count: RowCountRule | None = None
    unique: list[UniqueRule] = []
    at_most_multiple: list[AtMostMultipleRule] = []
    freshness: FreshnessRule | None = None
    non_negative: NonNegativeRule | None = None


@dataclass(frozen=True)
class ExpectationsOutcome:
    success: bool  # no error-severity finding: failed warning rules alone leave it True
    findings: list[Finding]  # one per failed (or uncheckable) expectation
    statistics: dict[str, Any]  # GX's evaluated/successful/unsuccessful counts, plus rows and seconds
    data_docs_uri: str | None  # path of the Data Docs index.html, when it was built


@dataclass(frozen=True)
class _Planned:
    expectation: Any  # a great_expectations Expectation
    column: str | None  # the Finding's column
    severity: Severity
    describe: str  # completes "N of M rows (p%) ...", e.g. "are negative"
    reads: tuple[str, ...]  # columns of the caller's frame it needs
    helper: tuple[str, str, float] | None = None  # (name, column, factor): a column added as column * factor


def _unix_seconds(moment: dt.datetime) -> int:
    # Spans are UTC (tfpipe.data.spans); a naive datetime is read as UTC, never as local time.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def _plan(config: ExpectationsConfig, span: tuple[dt.datetime, dt.datetime] | None) -> list[_Planned]:
    """The suite's expectations, in config order."""
    import great_expectations.expectations as gxe

    def gx_severity(severity: Severity) -> str:
        # Shown in Data Docs; the outcome is decided by our own severity.
        return "critical" if severity == "error" else "warning"

    planned: list[_Planned] = []
    if (rule := config.row_count) is not None:
        bounds = f"between {rule.min} and {rule.max}"
        if rule.max is None:
            bounds = f"at least {rule.min}"
        elif rule.min is None:
            bounds = f"at most {rule.max}"
        expectation = gxe.ExpectTableRowCountToBeBetween(
            min_value=rule.min, max_value=rule.max, severity=gx_severity(rule.severity)
        )
        planned.append(_Planned(expectation, None, rule.severity, f"expected {bounds}", ()))
    for rule in config.unique:
        name = ",".join(rule.columns)
        expectation = gxe.ExpectCompoundColumnsToBeUnique(
            column_list=list(rule.columns),
            mostly=rule.mostly,
            # GX's default (skip rows whose key is all empty) runs dropna over the whole frame,
            # string columns included: about 1.5 s on 1M rows, for keys that are never all empty.
            ignore_row_if="never",
            severity=gx_severity(rule.severity),
        )
        planned.append(
            _Planned(expectation, name, rule.severity, f"share ({name}) with another row", tuple(rule.columns))
        )
    for rule in config.at_most_multiple:
        # GX's cross-column UnexpectedRowsExpectation is SQL-only. On pandas the bound becomes a
        # helper column compared by a column-pair expectation, which reports both values per row.
        bound = f"{rule.of} * {rule.factor:g}"
        expectation = gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=bound,
            column_B=rule.column,
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            mostly=rule.mostly,
            severity=gx_severity(rule.severity),
            notes=f"`{bound}` is a helper column: {rule.of} multiplied by {rule.factor:g}.",
        )
        planned.append(
            _Planned(
                expectation,
                rule.column,
                rule.severity,
                f"have {rule.column} > {bound}",
                (rule.of, rule.column),
                (bound, rule.of, rule.factor),
            )
        )
    if (rule := config.freshness) is not None:
        if span is None:
            log.info("no span given: freshness of %s is not checked", rule.column)
        else:
            start, end = (_unix_seconds(moment) for moment in span)
            window = (
                f"[{dt.datetime.fromtimestamp(start, dt.UTC):%Y-%m-%d %H:%M}, "
                f"{dt.datetime.fromtimestamp(end, dt.UTC):%Y-%m-%d %H:%M}) UTC"
            )
            expectation = gxe.ExpectColumnValuesToBeBetween(
                column=rule.column,
                min_value=start,
                max_value=end,
                strict_max=True,
                mostly=rule.mostly,
                severity=gx_severity(rule.severity),
                notes=f"The run's span {window}, as Unix seconds.",
            )
            planned.append(
                _Planned(
                    expectation,
                    rule.column,
                    rule.severity,
                    f"are outside the span [{start}, {end}) = {window}",
                    (rule.column,),
                )
            )
    if (rule := config.non_negative) is not None:
        for column in rule.columns:
            expectation = gxe.ExpectColumnValuesToBeBetween(
                column=column, min_value=0, mostly=rule.mostly, severity=gx_severity(rule.severity)
            )
            planned.append(_Planned(expectation, column, rule.severity, "are negative (expected >= 0)", (column,)))
    return planned


def _working_frame(frame: pd.DataFrame, planned: list[_Planned]) -> pd.DataFrame:
    """A copy of only the columns the suite reads, plus the helper columns."""
    import numpy as np
    import pandas as pd

    # GX filters the whole frame once per column expectation: fewer columns, less copying. The
    # copy also keeps the caller's frame untouched by the helper columns.
    reads = {column for item in planned for column in item.reads}
    working = frame.loc[:, [column for column in frame.columns if column in reads]]
    for column in working.columns:
        dtype = working[column].dtype
        # GX compares int64/float64 vectorized, any other numeric dtype value by value.
        if (
            pd.api.types.is_numeric_dtype(dtype)
            and not pd.api.types.is_bool_dtype(dtype)
            and dtype not in (np.dtype("int64"), np.dtype("float64"))
        ):
            working[column] = working[column].astype("float64")
    for item in planned:
        if item.helper is not None:
            name, column, factor = item.helper
            if name in frame.columns:
                raise ValueError(f"helper column {name!r} clashes with a column of the data")
            working[name] = working[column] * factor
    return working


def _context(docs_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # Stores stay in memory and the only site is pinned under output_dir: an ephemeral context's
    # default site is a temp folder, and a file context writes gx/ into the working directory.
    # GX 1.24 sends no usage statistics; analytics_enabled=False states it for later versions.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            _SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "(" + ", ".join(f"{key}={_format(item)}" for key, item in value.items()) + ")"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_format(item) for item in value) + ")"
    return str(value)


def _finding(planned: _Planned, result: Any) -> Finding:
    rule = planned.expectation.expectation_type
    kwargs = {key: value for key, value in planned.expectation.configuration.kwargs.items() if key != "batch_id"}
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        message = f"could not be evaluated: {exception.get('exception_message') or 'GX raised an exception'}"
        return Finding("expectation", rule, planned.column, planned.severity, message, {"kwargs": kwargs})
    outcome = dict(result.result or {})
    if "unexpected_count" not in outcome:  # the row count
        observed = outcome.get("observed_value")
        message = f"{observed} rows, {planned.describe}"
        return Finding(
            "expectation",
            rule,
            planned.column,
            planned.severity,
            message,
            {"observed_value": observed, "kwargs": kwargs},
        )
    unexpected = int(outcome.get("unexpected_count") or 0)
    checked = int(outcome.get("element_count") or 0) - int(outcome.get("missing_count") or 0)
    percent = float(outcome.get("unexpected_percent") or 0.0)
    examples = list(outcome.get("partial_unexpected_list") or [])
    mostly = float(kwargs.get("mostly", 1.0))
    message = f"{unexpected} of {checked} rows ({percent:.3g}%) {planned.describe}"
    if mostly < 1.0:
        message += f", at most {(1.0 - mostly) * 100:.3g}% allowed"
    if examples:
        if planned.helper is not None:  # pairs (column * factor, column)
            shown = [f"{planned.column}={_format(b)} > {_format(a)}" for a, b in examples[:_EXAMPLES_IN_MESSAGE]]
        else:
            shown = [_format(example) for example in examples[:_EXAMPLES_IN_MESSAGE]]
        message += "; e.g. " + ", ".join(shown)
    details = {
        "unexpected_count": unexpected,
        "unexpected_percent": percent,
        "checked_rows": checked,
        "examples": examples,
        "mostly": mostly,
        "kwargs": kwargs,
    }
    return Finding("expectation", rule, planned.column, planned.severity, message, details)


_RENDER_TIME = re.compile(r"\?d=\d{8}T\d{6}\.\d+Z")
_TIMESTAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _renumber_uuids(text: str) -> str:
    numbers: dict[str, str] = {}
    return _UUID.sub(lambda m: numbers.setdefault(m.group(0), f"00000000-0000-4000-8000-{len(numbers):012d}"), text)


def _strip_render_times(docs_dir: Path, run_time: str) -> None:
    """Make Data Docs a pure function of the validation, so a rerun writes the same bytes.

    GX stamps each page with the render time (a cache-buster on asset URLs), shows the wall-clock
    validation time (shown as the run's own time instead), and gives its HTML
    elements and in-memory objects random UUIDs; these are renumbered in order of appearance,
    consistently within each page (element ids only link within their page).
    """
    for page in docs_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        cleaned = _renumber_uuids(_TIMESTAMP.sub(run_time, _RENDER_TIME.sub("", text)))
        if cleaned != text:
            page.write_text(cleaned, encoding="utf-8")


def run_expectations(
    frame: pd.DataFrame,
    config: ExpectationsConfig,
    *,
    span: tuple[dt.datetime, dt.datetime] | None,
    output_dir: Path,
    suite_name: str = "chicago_taxi",
    run_name: str = "validation",
    run_time: dt.datetime | None = None,
) -> ExpectationsOutcome:
    """Validate `frame` against the configured rules, writing Data Docs to output_dir/data_docs/.

    `span` bounds the freshness rule, which is skipped when it is None. A Finding's column is the
    checked column (for at_most_multiple the `column` side, e.g. tips), the compound columns joined
    by commas for uniqueness, and None for the row count. A rule whose column is missing from the
    data is not run and becomes a "not checked" finding of its severity.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    began = time.perf_counter()
    docs_dir = Path(output_dir).resolve() / "data_docs"
    docs_dir.mkdir(parents=True, exist_ok=True)

    findings: list[Finding] = []
    runnable: list[_Planned] = []
    for item in _plan(config, span):
        missing = sorted({column for column in item.reads if column not in frame.columns})
        if missing:
            findings.append(
                Finding(
                    "expectation",
                    item.expectation.expectation_type,
                    item.column,
                    item.severity,
                    f"not checked: column {', '.join(missing)} is missing from the data",
                    {"missing_columns": missing},
                )
            )
        else:
            runnable.append(item)
    working = _working_frame(frame, runnable)

    context = _context(docs_dir)
    batch_definition = (
        context.data_sources.add_pandas(name="tfpipe")
        .add_dataframe_asset(name=suite_name)
        .add_batch_definition_whole_dataframe(name="whole_frame")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    by_id: dict[str, _Planned] = {}
    for item in runnable:
        added = suite.add_expectation(item.expectation)
        if added.id is not None:  # None: the same expectation is in the suite already
            by_id.setdefault(added.id, item)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_validation", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_name}_checkpoint",
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[_SITE])],
            # BASIC gives counts, percent and a few example values (shown in Data Docs as well);
            # SUMMARY adds row-index metrics that rescan each column (+0.7 s on 1M rows), and
            # COMPLETE would list every unexpected row.
            result_format={"result_format": "BASIC", "partial_unexpected_count": _EXAMPLES},
        )
    )
    # A fixed run identity (not the clock) names the result pages, so a rerun rewrites the same files.
    run_id = RunIdentifier(run_name=run_name, run_time=run_time or dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    checkpoint_result = checkpoint.run(batch_parameters={"dataframe": working}, run_id=run_id)

    statistics: dict[str, Any] = {"rows": len(frame)}
    for suite_result in checkpoint_result.run_results.values():
        statistics.update(suite_result.statistics)
        for result in suite_result.results:
            if not result.success:
                findings.append(_finding(by_id[result.expectation_config.id], result))
    statistics["seconds"] = round(time.perf_counter() - began, 3)

    _strip_render_times(docs_dir, run_id.run_time.strftime("%Y%m%dT%H%M%S.%fZ"))
    index = docs_dir / "index.html"
    return ExpectationsOutcome(
        success=not any(finding.severity == "error" for finding in findings),
        findings=findings,
        statistics=statistics,
        data_docs_uri=str(index) if index.exists() else None,
    )
