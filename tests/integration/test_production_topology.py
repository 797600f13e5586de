"""The production topology, started by the project's own script, operated through the REST API as the UI does.

`scripts/topology.py up` starts MLflow on Postgres, the model server, and Airflow as separate processes:
api-server (authentication on), scheduler with CeleryExecutor on Redis, dag-processor on a Git DAG bundle,
triggerer and a Celery worker. Each test module run gets its own Postgres databases, Redis database and
state folder, and removes them afterwards.

In order, as the operations happen in production:
1. authentication is on: the REST API and the model server's admin API refuse requests without credentials;
2. two triggered runs train, evaluate and register their models, then wait for a person: on-call approves
   one, which deploys although the scheduler was killed in the middle of its run, and rejects the other;
3. a run whose evaluation fails (MLflow is down) is cleared by on-call once MLflow is back, approved, and
   finishes: its canary waits deferred in the triggerer while live traffic is analysed; nothing is duplicated;
4. after a new commit of the DAG bundle, a task cleared in an old run reruns on the commit its run recorded;
5. a backfill over three monthly spans gives three runs, each on its own span, on the new commit, and their
   quota checks wait deferred while on-call holds the quota, then resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ML_PYTHON, PROJECT_ROOT, SAMPLE_CSV
from tests.integration.airflow_stack import POSTGRES_DSN, PostgresDatabase, free_port, land_sample
from tfpipe.config import load_pipeline_config
from tfpipe.quota import QuotaLedger
from tfpipe.quota.resources import Holder

pytestmark = pytest.mark.integration
DAG_ID = "chicago_taxi_training"
CONFIG = load_pipeline_config(PROJECT_ROOT / "dags" / "configs" / "chicago_taxi.yaml")
MODEL_NAME = CONFIG.evaluation.model_name
TOPOLOGY = [sys.executable, str(PROJECT_ROOT / "scripts" / "topology.py")]
# Manual runs: spans 2016-10 (its deployment is rejected), 2016-11 (the first deployment) and 2016-12 (a canary).
REJECTED, FIRST, SECOND = "2016-11-01T00:00:00Z", "2016-12-01T00:00:00Z", "2017-01-01T00:00:00Z"
RATE = 200  # requests per second of replayed trips while a canary is analysed
# Settings a developer's or `make test`'s environment may carry for the demo; the topology must not inherit them.
FOREIGN = ("AIRFLOW", "TFPIPE_", "MLFLOW_")


class Production:
    """The running topology: its CLI, its REST API with a real login, and its state folder."""

    def __init__(self, state: Path, env: dict[str, str]) -> None:
        self.state = state
        self.env = env
        self.base_url = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
        self.serving_url = f"http://127.0.0.1:{env['TFPIPE_SERVING_PORT']}"
        self.artifacts = Path(env.get("TFPIPE_ARTIFACT_ROOT", state / "artifacts"))
        self._tokens: dict[str, str] = {}

    def topology(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run([*TOPOLOGY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"topology {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        return done.stdout

    def secret(self, name: str) -> str:
        secrets = dict(line.split("=", 1) for line in (self.state / "secrets.env").read_text().splitlines())
        return secrets[name]

    def password(self, user: str) -> str:
        return json.loads((self.state / "secrets" / "passwords.json").read_text())[user]

    def login(self, user: str, password: str) -> tuple[int, str | None]:
        request = urllib.request.Request(
            f"{self.base_url}/auth/token",
            data=json.dumps({"username": user, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())["access_token"]
        except urllib.error.HTTPError as error:
            return error.code, None

    def api(self, method: str, path: str, body: Any = None, user: str = "admin") -> Any:
        if user not in self._tokens:
            status, token = self.login(user, self.password(user))
            assert status in (200, 201) and token, status
            self._tokens[user] = token
        request = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._tokens[user]}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def xcom(self, run_id: str, task_id: str) -> Any:
        path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
        value = self.api("GET", path)["value"]
        return json.loads(value) if isinstance(value, str) else value

    def answer_approval(self, run_id: str, option: str, user: str) -> None:
        """What a person does in the UI's Required actions: read the request, choose an option."""
        path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/approve_deployment/-1/hitlDetails"
        detail = self.api("GET", path)
        assert detail["options"] == ["Approve", "Reject"] and not detail["response_received"], detail
        assert "BLESSED" in detail["body"], detail["body"]
        self.api("PATCH", path, {"chosen_options": [option], "params_input": {}}, user=user)

    def run(self, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}")

    def task_instances(self, run_id: str) -> dict[str, dict[str, Any]]:
        found = self.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances?limit=200")
        return {ti["task_id"]: ti for ti in found["task_instances"] if ti["map_index"] in (-1, 0)}

    def states(self, run_id: str) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id).items()}

    def trigger(self, logical_date: str, conf: dict[str, Any]) -> str:
        return self.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": logical_date, "conf": conf})["dag_run_id"]

    def deployment(self) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.serving_url}/admin/deployment",
            headers={"Authorization": f"Bearer {self.secret('TFPIPE_SERVING_ADMIN_TOKEN')}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def logs(self) -> str:
        return self.topology("status") + "\n".join(
            f"--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}" for log in (self.state / "logs").glob("*")
        )

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str, interval: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def wait_for_run(self, run_id: str, timeout: float, watch: Callable[[dict[str, str | None]], None] = print) -> str:
        def finished() -> str | None:
            states = self.states(run_id)
            watch(states)
            state = self.run(run_id)["state"]
            return state if state in ("success", "failed") else None

        return self.wait_for(finished, timeout, f"run {run_id} to finish", interval=1.0)


def _redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    state = tmp_path_factory.mktemp("production")
    databases = {name: PostgresDatabase() for name in ("airflow", "mlflow", "quota")}
    server = POSTGRES_DSN.rsplit("/", 1)[0]
    # A database of its own on the machine's Redis (0 is left to whoever else uses it), flushed afterwards.
    broker = f"{os.environ.get('TFPIPE_TEST_REDIS', 'redis://127.0.0.1:6379')}/{random.randint(1, 15)}"
    _redis_flush(broker)
    bundles = json.loads(
        next(
            line.partition("=")[2]
            for line in (PROJECT_ROOT / "deploy" / "production.env").read_text().splitlines()
            if line.startswith("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=")
        )
    )
    for bundle in bundles:
        bundle["kwargs"]["refresh_interval"] = 5  # production fetches every minute; a test cannot wait that long
    env = {name: value for name, value in os.environ.items() if not name.startswith(FOREIGN)}
    env.update(
        {
            "TFPIPE_TOPOLOGY_STATE": str(state),
            "TFPIPE_ML_PYTHON": str(ML_PYTHON),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": databases["airflow"].sqlalchemy_url,
            "TFPIPE_MLFLOW_BACKEND_STORE_URI": databases["mlflow"].sqlalchemy_url,
            "AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER": f"{server}/{databases['quota'].name}",
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            # Free ports: another Airflow or model server may run on this machine.
            "AIRFLOW__API__PORT": str(free_port()),
            "TFPIPE_MLFLOW_PORT": str(free_port()),
            "TFPIPE_SERVING_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Quicker than production, same behaviour: short canary windows, no automatic retry (on-call
            # clears), and MLflow's client fails fast instead of retrying for minutes.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "TFPIPE_ROLLOUT_WINDOW_SECONDS": "8",
            "TFPIPE_ROLLOUT_POLL_SECONDS": "2",
            "TFPIPE_TASK_RETRIES": "0",
            # A person approves every deployment (evaluation.approval), as a cautious team runs it.
            "TFPIPE_APPROVAL": "required",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
        }
    )
    try:
        production = Production(state, env)
        land_sample(Path(env.get("TFPIPE_LANDING_ROOT", state / "landing")) / "chicago_taxi")
        production.topology("--timeout", "300", "up")
        production.wait_for(
            lambda: DAG_ID in {dag["dag_id"] for dag in production.api("GET", "/dags")["dags"]}, 180, "DAG parsed"
        )
        production.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        yield production
    finally:
        subprocess.run([*TOPOLOGY, "down"], env=env, capture_output=True, timeout=300)
        for database in databases.values():
            database.drop()
        _redis_flush(broker)


def test_authentication_is_on_for_the_api_and_the_model_servers_admin_api(production):
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{production.base_url}/api/v2/dags", timeout=30)
    assert anonymous.value.code == 401
    assert production.login("admin", "not-the-password")[0] == 401
    status, token = production.login("viewer", production.password("viewer"))
    assert status in (200, 201) and token
    viewer = urllib.request.Request(
        f"{production.base_url}/api/v2/dags/{DAG_ID}/dagRuns",
        data=json.dumps({"logical_date": FIRST}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(viewer, timeout=30)
    assert refused.value.code == 403, "a viewer cannot trigger runs"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        request = urllib.request.Request(f"{production.serving_url}/admin/deployment", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as admin:
            urllib.request.urlopen(request, timeout=30)
        assert admin.value.code in (401, 403), headers


def _lineage(production: Production, version: str) -> dict[str, Any]:
    """The registry's lineage of one model version, read from the MLflow server (in the ML runtime)."""
    script = (
        "import json, sys; from tfpipe.registry.mlflow_registry import ModelRegistry; "
        "print(json.dumps(ModelRegistry(sys.argv[1]).lineage(sys.argv[2], sys.argv[3])))"
    )
    tracking_uri = f"http://127.0.0.1:{production.env['TFPIPE_MLFLOW_PORT']}"
    done = subprocess.run(
        [str(ML_PYTHON), "-c", script, tracking_uri, MODEL_NAME, version],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_deployments_wait_for_a_person_and_one_deploys_although_the_scheduler_is_killed(production):
    """Two runs train at once. On-call approves one in the middle of a scheduler crash and rejects the other."""
    bundle_commit = production.api("GET", f"/dags/{DAG_ID}")["bundle_version"]
    approved = production.trigger(FIRST, {"data_uri": None})
    rejected = production.trigger(REJECTED, {})
    done = {"crash": False, "approved": False, "rejected": False}

    def operate(states: dict[str, str | None]) -> None:
        if not done["crash"] and states.get("train_model") == "running":
            production.topology("kill", "scheduler")  # SIGKILL: no clean shutdown, as a crashed host
            time.sleep(3)
            production.topology("start", "scheduler")
            done["crash"] = True
        if not done["approved"] and states.get("approve_deployment") == "awaiting_input":
            assert states["register_model"] == "success" and states["canary_rollout"] is None, states
            production.answer_approval(approved, "Approve", user="oncall")
            done["approved"] = True
        if not done["rejected"] and production.states(rejected).get("approve_deployment") == "awaiting_input":
            production.answer_approval(rejected, "Reject", user="oncall")
            done["rejected"] = True

    state = production.wait_for_run(approved, timeout=1200, watch=operate)
    states = production.states(approved)
    assert done["crash"], f"the scheduler was never killed while train_model ran: {states}"
    assert state == "success", f"{states}\n{production.logs()}"
    assert production.wait_for_run(rejected, timeout=600, watch=lambda _: operate({})) == "success"

    run = production.run(approved)
    assert run["bundle_version"] == bundle_commit, "the run records the Git commit of the DAG bundle it ran"
    assert run["conf"] == {"data_uri": None} and run["triggering_user_name"] == "admin"
    version = str(production.xcom(approved, "register_model")["model_version"])
    approval = _lineage(production, version)["approval"]
    assert (approval["decision"], approval["mode"], approval["approver"]) == ("Approve", "required", "oncall")
    deployment = production.deployment()
    assert deployment["stable"]["version"] == version and deployment["canary"] is None, deployment

    refused = production.states(rejected)
    assert refused["approve_deployment"] == "success" and refused["register_model"] == "success", refused
    assert refused["record_approval"] == "skipped" and refused["canary_rollout"] == "skipped", refused
    never_served = str(production.xcom(rejected, "register_model")["model_version"])
    assert never_served not in {item["version"] for item in deployment["loaded"]}


def _registry(production: Production) -> dict[str, Any]:
    """Every version of the model with its run key, read from the MLflow server (in the ML runtime)."""
    script = (
        "import json, sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
        "vs = c.search_model_versions(f\"name='{sys.argv[2]}'\"); "
        "print(json.dumps({'versions': sorted((v.version, v.tags.get('tfpipe.run_key')) for v in vs), "
        "'runs': len(c.search_runs([c.get_experiment_by_name('chicago_taxi').experiment_id]))}))"
    )
    done = subprocess.run(
        [str(ML_PYTHON), "-c", script, f"http://127.0.0.1:{production.env['TFPIPE_MLFLOW_PORT']}", MODEL_NAME],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@contextlib.contextmanager
def _live_traffic(production: Production, tmp_path: Path) -> Iterator[None]:
    """Held-out trips replayed at RATE requests/s: a 10% canary step sees 0.1 x RATE x the window (160 > 100)."""
    trips = tmp_path / "held_out.csv"
    with open(SAMPLE_CSV) as source, open(trips, "w") as target:
        lines = source.readlines()
        target.writelines([lines[0], *lines[-2000:]])
    stop = tmp_path / "stop-load"
    process = subprocess.Popen(
        [
            *(str(ML_PYTHON), "-m", "tfpipe.serving.loadgen", "--url", production.serving_url, "--csv", str(trips)),
            *("--rate", str(RATE), "--duration", "900", "--stop-file", str(stop)),
            *("--report", str(tmp_path / "load.json")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        stop.touch()
        process.wait(timeout=60)


def test_on_call_clears_a_failed_task_and_the_run_finishes_without_duplicates(production, tmp_path):
    production.topology("stop", "mlflow")
    run_id = production.trigger(SECOND, {})
    state = production.wait_for_run(run_id, timeout=900, watch=lambda states: None)
    states = production.states(run_id)
    assert state == "failed" and states["evaluate_model"] == "failed", states
    assert states["register_model"] == "upstream_failed" and states["canary_rollout"] == "upstream_failed", states
    [run_root] = (production.artifacts / "chicago_taxi" / "span=2016-12").iterdir()
    before = _files(run_root)

    production.topology("start", "mlflow")
    seen: dict[str, set[str | None]] = {}

    def watch(states: dict[str, str | None]) -> None:
        for task, value in states.items():
            seen.setdefault(task, set()).add(value)
        if states.get("approve_deployment") == "awaiting_input" and "approved" not in seen:
            production.answer_approval(run_id, "Approve", user="oncall")
            seen["approved"] = set()

    with _live_traffic(production, tmp_path):
        cleared = production.api(
            "POST",
            f"/dags/{DAG_ID}/clearTaskInstances",
            # What the UI's "Clear" sends for a failed task, downstream included.
            {"dag_run_id": run_id, "task_ids": ["evaluate_model"], "include_downstream": True}
            | {"only_failed": False, "dry_run": False},
        )
        assert "evaluate_model" in {ti["task_id"] for ti in cleared["task_instances"]}
        state = production.wait_for_run(run_id, timeout=600, watch=watch)
    states = production.states(run_id)
    assert state == "success", f"{states}\n{production.logs()}"
    assert "deferred" in seen["canary_rollout"], "the canary waited for its analysis in the triggerer"
    version = str(production.xcom(run_id, "register_model")["model_version"])
    deployment = production.deployment()
    assert deployment["stable"]["version"] == version and deployment["canary"] is None, deployment

    after = _files(run_root)
    assert [p.name for p in run_root.parent.iterdir()] == [run_root.name], "one artifact folder for the run"
    # Stage result files hold timings; the evaluation is what the rerun redid.
    upstream = {
        path: digest for path, digest in before.items() if not path.startswith(("_stage_results", "evaluation"))
    }
    assert {path: after.get(path) for path in upstream} == upstream, "the rerun left every upstream output as it was"
    registry = _registry(production)
    assert [number for number, _ in registry["versions"]] == ["1", "2", "3"], registry
    assert registry["runs"] == 3, "one MLflow run per Airflow run: the cleared evaluation found its run again"
    ledger = QuotaLedger.from_url(production.env["AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER"])
    assert ledger.status()["active"] == [], "every reservation was released"


def test_a_cleared_task_reruns_on_the_bundle_commit_its_run_recorded(production):
    [first] = [run for run in _runs(production) if run["logical_date"] == FIRST]
    old_commit = first["bundle_version"]
    repo = Path(production.env.get("TFPIPE_DAG_BUNDLE_REPO", production.state / "dag-bundle"))
    dag_file = repo / "dags" / "chicago_taxi_training.py"
    dag_file.write_text(dag_file.read_text().replace('"""chicago_taxi_training:', '"""chicago_taxi_training (v2):', 1))
    git = ["git", "-C", str(repo), "-c", "user.name=dev", "-c", "user.email=dev@example.com"]
    subprocess.run([*git, "commit", "--quiet", "--all", "--message", "a new DAG doc"], check=True)
    new_commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    production.wait_for(
        lambda: production.api("GET", f"/dags/{DAG_ID}")["bundle_version"] == new_commit, 180, "the new commit parsed"
    )

    production.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {"dag_run_id": first["dag_run_id"], "task_ids": ["enough_history"], "only_failed": False, "dry_run": False},
    )

    def rerun() -> dict[str, Any] | None:
        ti = production.task_instances(first["dag_run_id"])["enough_history"]
        return ti if ti["state"] == "success" and ti["try_number"] >= 2 else None

    ti = production.wait_for(rerun, 300, "the cleared task to run again")
    assert ti["dag_version"]["bundle_version"] == old_commit != new_commit, ti["dag_version"]
    assert production.run(first["dag_run_id"])["bundle_version"] == old_commit


def _runs(production: Production) -> list[dict[str, Any]]:
    return production.api("GET", f"/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]


def test_a_backfill_gives_one_run_per_span_and_quota_waits_resume_in_the_triggerer(production):
    quota = CONFIG.quota
    ledger = QuotaLedger.from_url(production.env["AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER"])
    drill = Holder("on-call", "drill", "hold-everything")
    held = ledger.reserve(
        holder=drill,
        pipeline="drill",
        stage="drill",
        # Every core of the shared budget: each guarded stage asks for at least one.
        request={"cpu": quota.budget.as_dict()["cpu"]},
        budget=quota.budget.as_dict(),
        cap={},
        lease_seconds=900,
    )
    assert held.granted, held
    commit = production.api("GET", f"/dags/{DAG_ID}")["bundle_version"]
    production.api(
        "POST",
        "/backfills",
        {"dag_id": DAG_ID, "from_date": "2013-01-01T00:00:00Z", "to_date": "2013-03-01T00:00:00Z"}
        | {"max_active_runs": 3, "reprocess_behavior": "none"},
    )

    def backfill_runs() -> list[dict[str, Any]]:
        return [run for run in _runs(production) if run["run_type"] == "backfill"]

    def waiting_for_quota() -> list[str]:
        return [
            run["dag_run_id"]
            for run in backfill_runs()
            if production.states(run["dag_run_id"]).get("check_quota_validate_examples") == "deferred"
        ]

    waiting = production.wait_for(waiting_for_quota, 300, "quota checks deferred while on-call holds the quota")
    ledger.release(drill.key, outcome="drill over")

    def finished() -> list[dict[str, Any]] | None:
        runs = backfill_runs()
        return runs if all(run["state"] in ("success", "failed") for run in runs) else None

    runs = production.wait_for(finished, 600, "three backfill runs to finish")
    assert sorted(run["state"] for run in runs) == ["success"] * 3, production.logs()
    assert sorted(run["logical_date"][:7] for run in runs) == ["2013-01", "2013-02", "2013-03"]
    assert {run["bundle_version"] for run in runs} == {commit}
    assert set(waiting) <= {run["dag_run_id"] for run in runs}
    for run in runs:
        span = run["logical_date"][:7]
        [run_dir] = (production.artifacts / "chicago_taxi" / f"span={span}").iterdir()
        manifest = json.loads((run_dir / "examples" / "manifest.json").read_text())
        assert manifest["span"] == span and run_dir.name.startswith("run=backfill__")
        states = production.states(run["dag_run_id"])
        assert states["check_quota_validate_examples"] == "success" and states["validate_examples"] == "success"
        # The first spans have no history to train on: validated, then training is skipped with the reason.
        assert states["enough_history"] == "success" and states["train_model"] == "skipped", states
        splits = json.loads((run_dir / "splits" / "manifest.json").read_text())
        assert splits["trainable"] is False and "not enough history to train" in splits["reason"]
