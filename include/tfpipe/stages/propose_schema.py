"""Propose-schema: a schema update from data, for a person to review; the curated schema is never rewritten.

    python -m tfpipe propose-schema --schema-uri dags/configs/chicago_taxi/schema.pbtxt \\
        --data-uri <csv file or folder> --output-uri <proposed.pbtxt>

The curated schema is reviewed like code, so the pipeline only ever proposes: statistics of the data
are computed with the validation stage's own decoder (typed by the current schema), TFDV's
`update_schema` makes the schema accept them, the proposal is written to --output-uri (refused when
that is the schema itself) and the change is logged as a unified diff with a per-feature summary.

What TFDV 1.16's `update_schema` does: it fixes each anomaly the statistics raise against the schema,
so it only ever relaxes, never tightens or deletes. It widens an int or float domain to the observed
min and max; appends unseen values to a string domain, but only those in the statistics' rank
histogram (the 100 most frequent values here), so a rare new value can be missing from the proposal;
lowers presence (min_fraction, min_count) to what was seen; marks a feature that is absent from the
data DEPRECATED; and adds a feature for each new column, typed BYTES by our decoder whatever its
content (columns are typed by the current schema). It ignores environments: propose from training
data. Values the decoder could not read count as missing and can lower presence; they are reported.

Comments: a text proto loses its comments when rewritten. The proposal carries over the comment
block directly above each `feature {` (keyed by feature name) and the file's leading comment block;
any other comment (inside a block, after a value, above another field) is lost, and the log says how
many. The diff is between the canonical texts of the two schemas, so it shows changes of content
only, not of comments, field order or number formatting.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tfpipe import artifacts
from tfpipe.errors import DataError, StageError

log = logging.getLogger(__name__)
DEFAULT_BEAM_ARGS = ["--runner=DirectRunner"]
_FEATURE_START = re.compile(r"^feature\s*\{\s*$")
_NAME = re.compile(r'^\s*name:\s*"((?:[^"\\]|\\.)*)"')
# A '#' outside double-quoted strings: a comment, whole-line or after a value.
_HAS_COMMENT = re.compile(r'^(?:[^"#]|"(?:[^"\\]|\\.)*")*#')
_SHOWN_VALUES = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schema-uri", required=True, help="the curated schema (text proto); only read")
    parser.add_argument("--data-uri", required=True, help="a CSV file or a folder of CSV files to propose from")
    parser.add_argument("--output-uri", required=True, help="where to write the proposed schema (text proto)")
    parser.add_argument(
        "--beam-pipeline-args",
        default=json.dumps(DEFAULT_BEAM_ARGS),
        help=f"Beam pipeline options as a JSON list (default: {json.dumps(DEFAULT_BEAM_ARGS)})",
    )


def _same_target(output_uri: str, schema_uri: str) -> bool:
    if artifacts.is_remote(output_uri) or artifacts.is_remote(schema_uri):
        return output_uri.rstrip("/") == schema_uri.rstrip("/")
    output, schema = artifacts.local_path(output_uri), artifacts.local_path(schema_uri)
    if output.exists() and schema.exists():
        return os.path.samefile(output, schema)
    return output.resolve() == schema.resolve()


def _beam_args(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StageError(f"--beam-pipeline-args must be a JSON list of strings, got {text!r}")
    return value


def curated_comments(text: str) -> tuple[list[str], dict[str, list[str]], int]:
    """(leading comment block, comment block above each feature by name, comment lines that fit neither)."""
    lines = text.splitlines()
    header: list[str] = []
    by_feature: dict[str, list[str]] = {}
    kept = 0
    block: list[str] = []
    for index, line in enumerate(lines):
        if line.startswith("#"):
            block.append(line)
            continue
        if block and _FEATURE_START.match(line):
            body = itertools.takewhile(lambda text: not text.startswith("}"), lines[index + 1 :])
            name = next((m.group(1) for m in map(_NAME.match, body) if m), None)
            if name is not None and name not in by_feature:
                by_feature[name] = block
                kept += len(block)
        elif block and len(block) == index and not header:  # the file's leading comment block
            header = block
            kept += len(block)
        block = []
    total = sum(1 for line in lines if _HAS_COMMENT.match(line))
    return header, by_feature, total - kept


def with_comments(canonical: str, header: list[str], by_feature: dict[str, list[str]]) -> str:
    """The canonical text of a schema with the curated comments put back above their features."""
    lines = canonical.splitlines()
    out = [*header, ""] if header else []
    for index, line in enumerate(lines):
        if _FEATURE_START.match(line) and index + 1 < len(lines) and (name := _NAME.match(lines[index + 1])):
            out.extend(by_feature.get(name.group(1), []))
        out.append(line)
    return "\n".join(out) + "\n"


def _bounds(domain: Any) -> str:
    # float_domain holds float32: 41.6 reads back as 41.599998..., so 7 significant digits.
    low = f"{domain.min:.7g}" if domain.HasField("min") else "-inf"
    high = f"{domain.max:.7g}" if domain.HasField("max") else "inf"
    return f"[{low}, {high}]"


def _values(added: list[str]) -> str:
    shown = ", ".join(repr(v) for v in added[:_SHOWN_VALUES])
    return f"+{len(added)} value(s): {shown}" + (", ..." if len(added) > _SHOWN_VALUES else "")


def _field_change(field: str, old: Any, new: Any) -> str:
    if field in {"int_domain", "float_domain"}:
        return f"{field} {_bounds(getattr(old, field))} -> {_bounds(getattr(new, field))}"
    if field == "string_domain":
        known = set(old.string_domain.value)
        return f"string_domain {_values([v for v in new.string_domain.value if v not in known])}"
    if field == "presence":
        parts = [
            f"presence {name} {getattr(old.presence, name):g} -> {getattr(new.presence, name):g}"
            for name in ("min_fraction", "min_count")
            if getattr(old.presence, name) != getattr(new.presence, name)
        ]
        return ", ".join(parts) or "presence changed"
    return f"{field} changed"


def summarize_changes(current: Any, proposed: Any) -> list[str]:
    """One line per changed feature or domain, naming it (the diff's context often does not)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    lines: list[str] = []
    old_features = {feature.name: feature for feature in current.feature}
    for feature in proposed.feature:
        old = old_features.get(feature.name)
        if old is None:
            kind = schema_pb2.FeatureType.Name(feature.type)
            lines.append(
                f"{feature.name}: new column, proposed as {kind} (columns unknown to the schema are read as text: "
                "set the right type, domain and presence by hand)"
            )
            continue
        if old == feature:
            continue
        if feature.lifecycle_stage == schema_pb2.DEPRECATED and old.lifecycle_stage != schema_pb2.DEPRECATED:
            lines.append(
                f"{feature.name}: absent from the data, so TFDV marks it DEPRECATED (drop this change if "
                "the data is simply incomplete)"
            )
            continue
        names = {field.name for field, _ in old.ListFields()} | {field.name for field, _ in feature.ListFields()}
        changed = [name for name in sorted(names) if getattr(old, name) != getattr(feature, name)]
        lines.append(f"{feature.name}: " + "; ".join(_field_change(name, old, feature) for name in changed))
    old_domains = {domain.name: domain for domain in current.string_domain}
    for domain in proposed.string_domain:
        known = set(old_domains[domain.name].value) if domain.name in old_domains else set()
        added = [value for value in domain.value if value not in known]
        if added:
            lines.append(f"string_domain {domain.name!r}: {_values(added)}")
    return lines


def _write_text(uri: str, text: str) -> None:
    if artifacts.is_remote(uri):
        with artifacts.open_binary(uri, "wb") as handle:
            handle.write(text.encode())
        return
    path = artifacts.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(handle.name, 0o666 & ~mask)  # temp files are private; published ones are not
    os.replace(handle.name, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if _same_target(args.output_uri, args.schema_uri):
        raise StageError(
            f"--output-uri {args.output_uri} is the curated schema itself: the schema is only changed by a person "
            "reviewing the proposal; write the proposal elsewhere"
        )
    if not artifacts.is_remote(args.output_uri) and artifacts.local_path(args.output_uri).is_dir():
        raise StageError(f"--output-uri {args.output_uri} is a folder, expected a file path")
    if not artifacts.exists(args.schema_uri):
        raise DataError(f"{args.schema_uri}: no such schema file (schema_uri)")
    beam_args = _beam_args(args.beam_pipeline_args)
    files = artifacts.csv_files(args.data_uri, "data_uri")

    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from tfpipe.validation import tfdv_checks

    with artifacts.open_binary(args.schema_uri) as handle:
        current_text = handle.read().decode("utf-8")
    current = text_format.Parse(current_text, schema_pb2.Schema())

    folder = Path(tempfile.mkdtemp(prefix="tfpipe-propose-"))
    try:
        statistics, decoded = tfdv_checks.compute_statistics({"data": files}, current, folder, beam_args)["data"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    findings = decoded.findings("data")
    fatal = [f for f in findings if f.check == "file" and f.rule in {"unreadable_file", "empty_file", "no_rows"}]
    if fatal or decoded.rows == 0:
        problems = "; ".join(f.message for f in fatal) or "no rows"
        raise DataError(f"{args.data_uri}: nothing to propose a schema from: {problems}")
    for finding in findings:
        log.warning("data: %s%s", f"{finding.column}: " if finding.column else "", finding.message)
    if findings:
        log.warning("unreadable values count as missing and bad rows are left out: the proposal may relax presence")

    proposed = tfdv.update_schema(current, statistics)
    before = text_format.MessageToString(current)
    after = text_format.MessageToString(proposed)
    header, by_feature, lost = curated_comments(current_text)
    text = with_comments(after, header, by_feature)
    if text_format.Parse(text, schema_pb2.Schema()) != proposed:  # the comments must not change the content
        raise RuntimeError("carrying the comments over changed the proposed schema")
    _write_text(args.output_uri, text)

    diff = list(
        difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            fromfile=f"{args.schema_uri} (current, canonical)",
            tofile=f"{args.output_uri} (proposed)",
            lineterm="",
        )
    )
    changed = proposed != current
    log.info("proposed from %d row(s) in %d file(s) of %s", decoded.rows, len(files), args.data_uri)
    if changed:
        log.info("changes TFDV proposes (review each; the curated schema is unchanged):")
        for line in summarize_changes(current, proposed):
            log.info("  %s", line)
        log.info("diff of the schema contents:\n%s", "\n".join(diff))
    else:
        log.info("no changes: the data conforms to the current schema")
    kept = len(header) + sum(len(block) for block in by_feature.values())
    log.info(
        "comments: %d line(s) carried over to %s%s (a text proto loses its comments when rewritten)",
        kept,
        args.output_uri,
        f", {lost} line(s) not carried over" if lost else "",
    )
    return {
        "proposed_schema_uri": args.output_uri,
        "changed": changed,
        "diff_lines": len(diff),
        "rows": decoded.rows,
        "comment_lines_lost": lost,
    }
