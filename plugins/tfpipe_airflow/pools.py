"""The Airflow pools the pipeline configs name, as `airflow pools import` reads them.

    python -m tfpipe_airflow.pools dags/configs > pools.json && airflow pools import pools.json

Tuning trials and the final training's workers share one pool per config (`training.tuning.pool`),
so the machine (or the cluster's training quota) is never asked for more cores than it has.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tfpipe.config import load_pipeline_config
from tfpipe.errors import ConfigError


def pools_of(configs_folder: Path) -> dict[str, dict[str, Any]]:
    """Pool name -> {slots, description, include_deferred}; the largest size when configs share a pool."""
    pools: dict[str, dict[str, Any]] = {}
    for path in sorted(configs_folder.glob("*.yaml")):
        tuning = load_pipeline_config(path).training.tuning
        current = pools.get(tuning.pool)
        if current is None or current["slots"] < tuning.pool_slots:
            pools[tuning.pool] = {
                "slots": tuning.pool_slots,
                "description": "tfpipe training: tuning trials and distributed training workers",
                "include_deferred": False,
            }
    return pools


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path("dags/configs")
    try:
        print(json.dumps(pools_of(folder), indent=2, sort_keys=True))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
