"""What validation found, in a form every check shares: one finding per column and rule.

TFDV anomalies, drift and skew comparisons, Great Expectations results and unreadable files all
become Findings, so the stage can print one short summary (each failing column and rule) and fail
or warn as the pipeline config says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]
Check = Literal["file", "schema", "drift", "skew", "expectation"]


@dataclass(frozen=True)
class Finding:
    check: Check
    rule: str  # short and stable: "out_of_range", "missing_column", "jensen_shannon", GX's expectation type ...
    column: str | None  # the offending column; None for a dataset-level rule (row count, file)
    severity: Severity
    message: str  # one line a person reads in the task log
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        where = self.column if self.column is not None else "(dataset)"
        return f"{self.severity.upper():<7} {where} [{self.check}/{self.rule}]: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def errors(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.severity == "error"]


def summary(findings: list[Finding], report_uri: str | None = None) -> str:
    """The short summary that ends the task log: errors first, then warnings, then the report."""
    ordered = sorted(findings, key=lambda f: (f.severity != "error", f.column or "", f.check, f.rule))
    lines = [f.line() for f in ordered] or ["no findings"]
    if report_uri:
        lines.append(f"full report: {report_uri}")
    return "\n".join(lines)
