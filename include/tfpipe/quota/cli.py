"""`python -m tfpipe.quota`: the ledger from a shell, for people and for CI.

    python -m tfpipe.quota --ledger-url sqlite:////abs/state/quota/ledger.db status
    python -m tfpipe.quota --config dags/configs/chicago_taxi.yaml estimates
    python -m tfpipe.quota --config dags/configs/chicago_taxi.yaml import-results
    python -m tfpipe.quota --config ... record --stage train --result-file my_experiment/result.json
    python -m tfpipe.quota --ledger-url ... metrics [--output state/quota/metrics/tfpipe_quota.prom]
    python -m tfpipe.quota --ledger-url ... release DAG/RUN/TASK/MAP_INDEX

The ledger is named by a SQLAlchemy URL (`--ledger-url`, or TFPIPE_QUOTA_LEDGER_URL), or, with only
`--config`, by the config's `quota.ledger.sqlite_fallback`. In an Airflow deployment the ledger is an
Airflow connection: run `python -m tfpipe_airflow.hooks.quota ...` in the Airflow runtime instead, which
resolves the connection and takes the same commands. This module imports no Airflow, so it runs in
either runtime against a URL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfpipe.errors import ConfigError
from tfpipe.quota.estimates import estimate, import_stage_results, usage_records
from tfpipe.quota.ledger import QuotaLedger
from tfpipe.quota.metrics import collect, write_textfile
from tfpipe.quota.resources import RESOURCES, amount


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m tfpipe.quota", description="The tfpipe compute quota ledger.")
    top.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (default: $TFPIPE_QUOTA_LEDGER_URL)")
    top.add_argument("--config", help="a pipeline config: its quota section, pipeline name and artifact root")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="reservations held now, use against every limit, alerts")
    status.add_argument("--json", action="store_true")

    estimates = commands.add_parser("estimates", help="per-stage estimates for the next run from measured usage")
    estimates.add_argument("--pipeline", help="only this pipeline (default: the config's, else all)")
    estimates.add_argument("--percentile", type=float, help="default: the config's quota.history.percentile, or 90")
    estimates.add_argument("--max-runs", type=int, help="latest runs per stage (default: the config's, or 50)")
    estimates.add_argument(
        "--source", action="append", help="only history from these sources (airflow, result-file, experiment)"
    )
    estimates.add_argument("--json", action="store_true")

    imported = commands.add_parser("import-results", help="record the usage in every stage result file of a pipeline")
    imported.add_argument("--artifact-root", help="default: the config's artifacts.root")
    imported.add_argument("--pipeline", help="default: the config's pipeline")

    record = commands.add_parser("record", help="record one run's measured usage from its result file (experiments)")
    record.add_argument("--pipeline", help="default: the config's pipeline")
    record.add_argument("--stage", required=True)
    record.add_argument("--result-file", required=True, help="a stage's JSON result (with `usage`)")
    record.add_argument("--run-id", help="default: the file's path")
    record.add_argument("--source", default="experiment")

    metrics = commands.add_parser("metrics", help="print the quota metrics (Prometheus text), or write the textfile")
    metrics.add_argument("--output", help="write a node_exporter textfile here (atomically)")

    release = commands.add_parser("release", help="free a reservation by hand (its task is gone for good)")
    release.add_argument("holder_key", help="DAG_ID/RUN_ID/TASK_ID/MAP_INDEX, as `status` shows it")
    release.add_argument("--reason", default="released by hand")
    return top


def _config(path: str | None) -> Any:
    if not path:
        return None
    from tfpipe.config import load_pipeline_config

    return load_pipeline_config(path)


def ledger_url(args: argparse.Namespace, config: Any) -> str:
    url = args.ledger_url or os.environ.get("TFPIPE_QUOTA_LEDGER_URL")
    if url:
        return url
    if config is not None and config.quota is not None and config.quota.ledger.sqlite_fallback:
        return "sqlite:///" + config.quota.ledger.sqlite_fallback
    raise ConfigError("name the ledger: --ledger-url URL, TFPIPE_QUOTA_LEDGER_URL, or --config with a quota section")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_status(status: dict[str, Any]) -> None:
    print(f"quota ledger at {_when(status['now'])}; hours over the last {status['window_seconds'] / 3600:g} h")
    limits = {(item["scope"], item["subject"], item["resource"]): item for item in status["limits"]}
    print("\nuse against limits:")
    for (scope, subject, resource), item in sorted(limits.items()):
        if scope == "provider":
            used = item.get("used") or 0.0
        else:
            used = status["used"].get("*" if scope == "shared" else subject, {}).get(resource, 0.0)
        share = f"{used / item['limit']:.0%}" if item["limit"] else "-"
        name = {"shared": "shared budget", "pipeline": f"cap of {subject}", "provider": f"provider {subject}"}[scope]
        print(
            f"  {name:<28} {resource:<11} {amount(used, resource):>18} of {amount(item['limit'], resource):<16} {share}"
        )
    print(f"\nactive reservations ({len(status['active'])}):")
    for row in status["active"]:
        held = ", ".join(
            f"{name} {amount(row['resources'][name], name)}" for name in RESOURCES if row["resources"].get(name)
        )
        print(f"  {row['holder_key']}")
        print(f"      {row['pipeline']} {row['stage']}: {held}; lease until {_when(row['lease_expires_at'])}")
    fired = [item for item in status["alerts"] if item["fired"]]
    if fired:
        print("\nalerts fired (re-armed when use falls below the share):")
        for item in fired:
            print(f"  {item['scope']} {item['subject']} {item['resource']} at {item['level']:.0%} ({item['pipeline']})")
    if status["refusals"]:
        print("\nrefusals:")
        for item in status["refusals"]:
            print(f"  {item['pipeline']} {item['resource']}: {item['count']}")


def _print_estimates(rows: list[dict[str, Any]], config: Any) -> None:
    if not rows:
        print("no measured usage yet: run the pipeline, or `import-results` from the artifact root")
        return
    header = (
        f"{'pipeline':<16} {'stage':<14} {'runs':>4} {'wall p':>10} {'cpu-s p':>10} {'peak MiB':>9} "
        f"{'cores':>5} {'GiB':>5} {'core-h':>7}  sources"
    )
    print(f"estimates for the next run (p{rows[0]['percentile']:g} of each stage's latest runs)")
    print(header)
    for row in rows:
        print(
            f"{row['pipeline']:<16} {row['stage']:<14} {row['runs']:>4} {row['wall_seconds']:>9.1f}s "
            f"{_num(row['cpu_seconds'], '.1f'):>10} {_num(row['peak_rss_mib'], '.0f'):>9} {_num(row['cores'], 'g'):>5} "
            f"{_num(row['memory_gib'], 'g'):>5} {_num(row['cpu_hours'], '.3f'):>7}  {','.join(row['sources'])}"
        )
        quota = getattr(config, "quota", None)
        if quota is not None and row["stage"] in quota.stages:
            asked = quota.stages[row["stage"]]
            print(
                f"{'':<16} {'':<14} configured: cpu {asked.cpu:g}, memory {asked.memory_gib:g} GiB, "
                f"expected {asked.expected_minutes:g} min (measured p: {row['wall_seconds'] / 60:.1f} min)"
            )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace, ledger: QuotaLedger, config: Any = None) -> int:
    window = (config.quota.window_hours * 3600) if config is not None and config.quota is not None else 86400.0
    if args.command == "status":
        status = ledger.status(window)
        if args.json:
            print(json.dumps(status, indent=2, sort_keys=True, default=str))
        else:
            _print_status(status)
        return 0
    if args.command == "estimates":
        history = ledger.usage_history(args.pipeline or (config.pipeline if config is not None else None))
        if args.source:
            history = [row for row in history if row["source"] in args.source]
        settings = config.quota.history if config is not None and config.quota is not None else None
        q = args.percentile or (settings.percentile if settings else 90)
        max_runs = args.max_runs or (settings.max_runs if settings else 50)
        rows = [item.to_dict() for item in estimate(history, q=q, max_runs=max_runs)]
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
        else:
            _print_estimates(rows, config)
        return 0
    if args.command == "import-results":
        root = args.artifact_root or (config.artifacts.root if config is not None else None)
        pipeline = args.pipeline or (config.pipeline if config is not None else None)
        if not root or not pipeline:
            raise ConfigError("import-results needs --artifact-root and --pipeline, or --config")
        count = import_stage_results(ledger, root, pipeline)
        print(f"recorded the usage of {count} stage runs of {pipeline} from {root}")
        return 0
    if args.command == "record":
        pipeline = args.pipeline or (config.pipeline if config is not None else None)
        if not pipeline:
            raise ConfigError("record needs --pipeline or --config")
        result = json.loads(Path(args.result_file).read_text())
        usage = result.get("usage")
        if not usage:
            raise ConfigError(f"{args.result_file} has no `usage`: it is not a tfpipe stage result")
        records = usage_records(
            pipeline=pipeline,
            stage=args.stage,
            task_id=args.stage,
            run_id=args.run_id or str(Path(args.result_file).resolve()),
            usages=[usage],
            cores=None,
            source=args.source,
        )
        ledger.record_usage(records)
        print(f"recorded {args.stage} of {pipeline}: {usage}")
        return 0
    if args.command == "metrics":
        if args.output:
            print(write_textfile(ledger, args.output, window))
        else:
            from prometheus_client import generate_latest

            sys.stdout.write(generate_latest(collect(ledger, window)).decode())
        return 0
    if args.command == "release":
        released = ledger.release(args.holder_key, outcome=args.reason, window_seconds=window)
        if released.reservation is None:
            print(f"{args.holder_key} holds nothing", file=sys.stderr)
            return 1
        print(f"released {args.holder_key}: charged {released.charged}")
        return 0
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = _config(args.config)
        return run(args, QuotaLedger.from_url(ledger_url(args, config)), config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
