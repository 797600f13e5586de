"""The Airflow pools the pipeline configs name, as `airflow pools import` reads them.

    python -m tfpipe_airflow.pools dags/configs > pools.json && airflow pools import pools.json

Tuning trials and the final training's workers share one pool per config (`training.tuning.pool`),
so the machine (or the cluster's training quota) is never asked for more cores than it has.

With a `quota` section, the other heavy stages (validation, evaluation, serving) run in `quota.pool`,
one slot per core they ask for, sized from the same numbers as the quota ledger: `quota.budget.cpu`
cores shared by every pipeline (Airflow pools are global, like the budget). The budget is shared, so
configs that declare different budgets are an error here rather than a silent last-writer-wins.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tfpipe.config import load_pipeline_config
from tfpipe.errors import ConfigError

TRAINING_DESCRIPTION = "tfpipe training: tuning trials and distributed training workers"
QUOTA_DESCRIPTION = "tfpipe compute: quota-guarded ML stages, one slot per core (quota.budget.cpu)"


def pools_of(configs_folder: Path) -> dict[str, dict[str, Any]]:
    """Pool name -> {slots, description, include_deferred}; the largest size when configs share a pool."""
    pools: dict[str, dict[str, Any]] = {}
    budgets: dict[str, tuple[Path, dict[str, float]]] = {}
    for path in sorted(configs_folder.glob("*.yaml")):
        config = load_pipeline_config(path)
        tuning = config.training.tuning
        current = pools.get(tuning.pool)
        if current is None or current["slots"] < tuning.pool_slots:
            pools[tuning.pool] = {
                "slots": tuning.pool_slots,
                "description": TRAINING_DESCRIPTION,
                "include_deferred": False,
            }
        quota = config.quota
        if quota is None:
            continue
        if quota.pool == tuning.pool:
            raise ConfigError(
                f"{path}: quota.pool and training.tuning.pool are both {quota.pool!r}: they are sized differently "
                "(cores of the shared budget; the pipeline's trials), so name two pools"
            )
        budget = quota.budget.as_dict()
        ledger = quota.ledger.conn_id
        if ledger in budgets and budgets[ledger][1] != budget:
            raise ConfigError(
                f"{path}: quota.budget {budget} differs from {budgets[ledger][0]}'s {budgets[ledger][1]}, on the same "
                f"ledger ({ledger}): the budget is shared by every pipeline, declare it once for all"
            )
        budgets[ledger] = (path, budget)
        if "cpu" not in budget:
            continue
        slots = max(1, math.floor(budget["cpu"] + 1e-9))
        current = pools.get(quota.pool)
        if current is None or current["slots"] < slots:
            pools[quota.pool] = {"slots": slots, "description": QUOTA_DESCRIPTION, "include_deferred": False}
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
