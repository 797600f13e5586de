"""The production topology as plain processes on one machine: what docker/compose.yaml runs, without Docker.

Postgres holds Airflow's metadata, MLflow's tracking store and registry, and the quota ledger; Redis is
the Celery broker. Each component is its own process, with a pid file and a log under the state folder:

    mlflow          MLflow server on Postgres (ML runtime); artifacts under <state>/mlflow/artifacts
    model-server    the model server on the registry's champion (ML runtime), admin API behind a token
    api-server      Airflow's REST API and UI, authentication on (named users, generated passwords)
    scheduler       Airflow scheduler with CeleryExecutor
    dag-processor   parses the Git DAG bundle: every run records the bundle commit it ran
    triggerer       resumes deferred tasks (canary analysis, quota waits)
    celery-worker   runs the tasks; ML stages are subprocesses in the ML runtime

Usage (the Airflow runtime's python, from a shell without the demo's settings):

    python scripts/topology.py up                 # migrate, pools, publish the DAGs, start everything, wait healthy
    python scripts/topology.py status             # JSON: every component's pid and health
    python scripts/topology.py stop celery-worker # SIGTERM: a Celery worker finishes its running tasks first
    python scripts/topology.py kill scheduler     # SIGKILL one component (a crash drill) ...
    python scripts/topology.py start scheduler    # ... and start it again
    python scripts/topology.py publish-dags       # commit the working tree's dags/ to the bundle repository
    python scripts/topology.py env                # the environment the components run with (secrets masked)
    python scripts/topology.py down               # stop everything

Settings come from deploy/production.env, overridden by the environment. Required from the environment:
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, TFPIPE_MLFLOW_BACKEND_STORE_URI, AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER and
AIRFLOW__CELERY__BROKER_URL. Secrets (Fernet key, JWT secret, API secret key, the model server's admin
token) are read from the environment, or generated once into <state>/secrets.env (mode 0600) when unset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = ROOT / "deploy" / "production.env"
CONFIG = ROOT / "dags" / "configs" / "chicago_taxi.yaml"
ML_PYTHON = Path(os.environ.get("TFPIPE_ML_PYTHON", ROOT / ".venv-ml" / "bin" / "python"))
ORDER = ("mlflow", "model-server", "api-server", "scheduler", "dag-processor", "triggerer", "celery-worker")
REQUIRED = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "TFPIPE_MLFLOW_BACKEND_STORE_URI",
    "AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER",
    "AIRFLOW__CELERY__BROKER_URL",
)
GENERATED_SECRETS = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "TFPIPE_SERVING_ADMIN_TOKEN",
)
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "FERNET", "CONN", "BROKER_URL", "RESULT_BACKEND", "STORE_URI")


class TopologyError(RuntimeError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise TopologyError(f"{path}:{number}: expected NAME=value, got {line!r}")
        values[name.strip()] = value.strip()
    return values


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            return response.status, json.loads(body) if body[:1] in (b"{", b"[") else body
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return 0, None


class Topology:
    def __init__(self, state: Path) -> None:
        self.state = state.resolve()
        self.home = self.state / "airflow"
        self.logs = self.state / "logs"
        self.pids = self.state / "pids"
        self.env = self._environment()
        # The api-server writes the users' generated passwords into its log: only the owner reads logs.
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs.chmod(0o700)
        self.api_port = int(self.env["AIRFLOW__API__PORT"])
        self.mlflow_port = int(self.env["TFPIPE_MLFLOW_PORT"])
        self.serving_port = int(self.env["TFPIPE_SERVING_PORT"])

    # -- settings ---------------------------------------------------------------------------------
    def _secrets(self) -> dict[str, str]:
        """Secrets from the environment; the ones it lacks generated once and kept in a 0600 file."""
        path = self.state / "secrets.env"
        kept = read_env_file(path) if path.exists() else {}
        missing = [name for name in GENERATED_SECRETS if not os.environ.get(name) and name not in kept]
        if missing:
            from cryptography.fernet import Fernet

            for name in missing:
                kept[name] = Fernet.generate_key().decode() if "FERNET" in name else secrets.token_urlsafe(32)
            path.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
                handle.write("".join(f"{name}={value}\n" for name, value in sorted(kept.items())))
        return {name: os.environ.get(name) or kept[name] for name in GENERATED_SECRETS}

    def _environment(self) -> dict[str, str]:
        env = {**read_env_file(PRODUCTION_ENV), **os.environ}
        absent = [name for name in REQUIRED if not env.get(name)]
        if absent:
            raise TopologyError(f"set {', '.join(absent)} in the environment (see {PRODUCTION_ENV.relative_to(ROOT)})")
        # The environment wins over the file (as in compose); a demo shell's settings must not weaken production.
        if env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "").lower() in ("true", "1"):
            raise TopologyError("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS is on: production keeps authentication")
        if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
            raise TopologyError(f"AIRFLOW__CORE__EXECUTOR is {env.get('AIRFLOW__CORE__EXECUTOR')!r}: this is Celery's")
        env.update(self._secrets())
        api_port = env.setdefault("AIRFLOW__API__PORT", "8080")
        mlflow_port = env.setdefault("TFPIPE_MLFLOW_PORT", "5000")
        serving_port = env.setdefault("TFPIPE_SERVING_PORT", "8501")
        bundle = env.setdefault("TFPIPE_DAG_BUNDLE_REPO", str(self.state / "dag-bundle"))
        env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{api_port}/execution/")
        env.setdefault("AIRFLOW__CELERY__RESULT_BACKEND", "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        env.setdefault(
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(self.state / "secrets" / "passwords.json")
        )
        # MLflow's server-side job runner (GenAI jobs, seven Huey processes) has no use here.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env.setdefault("TFPIPE_ARTIFACT_ROOT", str(self.state / "artifacts"))
        env.setdefault("TFPIPE_LANDING_ROOT", str(self.state / "landing"))
        env.setdefault("TFPIPE_MLFLOW_ARTIFACT_ROOT", str(self.state / "mlflow" / "artifacts"))
        env.setdefault("TFPIPE_REQUEST_LOG_DIR", str(self.state / "serving" / "requests"))
        env.setdefault("TFPIPE_QUOTA_METRICS", str(self.state / "quota" / "metrics" / "tfpipe_quota.prom"))
        env.setdefault("AIRFLOW_CONN_TFPIPE_DAG_BUNDLE", json.dumps({"conn_type": "git", "host": bundle}))
        # Where the bundle's commits are checked out (Airflow's default is shared by everyone under /tmp).
        env.setdefault("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH", str(self.state / "dag-bundles"))
        token = env["TFPIPE_SERVING_ADMIN_TOKEN"]
        model_server = {"conn_type": "http", "host": "127.0.0.1", "port": int(serving_port), "password": token}
        env.setdefault("AIRFLOW_CONN_TFPIPE_MODEL_SERVER", json.dumps(model_server))
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),  # our plugin is an installed package
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "TFPIPE_ML_PYTHON": str(ML_PYTHON),
                "TFPIPE_PROJECT_ROOT": str(ROOT),
                "TFPIPE_SERVING_PORT": serving_port,
                "TFPIPE_MLFLOW_PORT": mlflow_port,
            }
        )
        return env

    # -- commands ---------------------------------------------------------------------------------
    def command(self, component: str) -> list[str]:
        airflow = [sys.executable, "-m", "airflow"]
        commands = {
            "mlflow": [
                str(ML_PYTHON.parent / "mlflow"),
                "server",
                "--backend-store-uri",
                self.env["TFPIPE_MLFLOW_BACKEND_STORE_URI"],
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--workers",
                "1",
                # Clients write model files straight to the artifact store (a bucket in production).
                "--no-serve-artifacts",
                "--default-artifact-root",
                self.env["TFPIPE_MLFLOW_ARTIFACT_ROOT"],
            ],
            "model-server": [
                str(ML_PYTHON),
                "-m",
                "tfpipe",
                "serve",
                "--config",
                str(CONFIG),
                "--from-registry",
                "champion",
                "--or-empty",  # a new deployment has no champion yet: the first rollout loads one
                "--host",
                "127.0.0.1",
                "--port",
                str(self.serving_port),
            ],
            "api-server": [*airflow, "api-server", "--workers", "1"],
            "scheduler": [*airflow, "scheduler"],
            "dag-processor": [*airflow, "dag-processor"],
            "triggerer": [*airflow, "triggerer"],
            "celery-worker": [*airflow, "celery", "worker"],
        }
        if component not in commands:
            raise TopologyError(f"unknown component {component!r}: one of {', '.join(ORDER)}")
        return commands[component]

    def airflow(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise TopologyError(f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def init(self) -> None:
        """Idempotent: Airflow's schema, the pipelines' pools, and the DAG bundle's first commit."""
        (self.home / "plugins").mkdir(parents=True, exist_ok=True)
        # The api-server generates the users' passwords into this file on its first start.
        Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent.mkdir(0o700, True, True)
        self.airflow("db", "migrate")
        pools = subprocess.run(
            [sys.executable, "-m", "tfpipe_airflow.pools", str(ROOT / "dags" / "configs")],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (self.home / "pools.json").write_text(pools)
        self.airflow("pools", "import", str(self.home / "pools.json"))
        if not (Path(self.env["TFPIPE_DAG_BUNDLE_REPO"]) / ".git").exists():
            self.publish_dags("first publication of the DAG bundle")

    def publish_dags(self, message: str) -> str:
        """Commit the working tree's dags/ to the bundle repository, as a CD job would; returns the commit."""
        location = self.env["TFPIPE_DAG_BUNDLE_REPO"]
        if "://" in location or location.startswith("git@"):
            raise TopologyError(f"the DAG bundle is {location}: publish by pushing dags/ there (CI/CD), not from here")
        repo = Path(location)
        if repo.exists() and not (repo / ".git").exists():
            raise TopologyError(f"{repo} exists and is not a Git repository: set TFPIPE_DAG_BUNDLE_REPO elsewhere")
        git = ["git", "-C", str(repo), "-c", "user.name=tfpipe-publish", "-c", "user.email=tfpipe-publish@localhost"]
        if not repo.exists():
            repo.mkdir(parents=True)
            subprocess.run([*git, "init", "--quiet", "--initial-branch", "main"], check=True)
        shutil.rmtree(repo / "dags", ignore_errors=True)
        shutil.copytree(ROOT / "dags", repo / "dags", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([*git, "add", "--all"], check=True)
        if subprocess.run([*git, "diff", "--cached", "--quiet"], check=False).returncode != 0:
            # The bundle commit names the source it came from; "-dirty": with uncommitted changes.
            source = subprocess.run(
                ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
            ).stdout.strip()
            body = f"{message}\n\nPublished from {source or 'a tree outside Git'}."
            subprocess.run([*git, "commit", "--quiet", "--message", body], check=True)
        return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

    # -- processes --------------------------------------------------------------------------------
    def pid(self, component: str) -> int | None:
        path = self.pids / f"{component}.pid"
        if not path.exists():
            return None
        pid = int(path.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        try:  # a zombie (exited, not yet reaped) counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return None
        except OSError:
            pass
        return pid

    def start(self, component: str) -> int:
        if (running := self.pid(component)) is not None:
            return running
        port = {"api-server": self.api_port, "mlflow": self.mlflow_port, "model-server": self.serving_port}
        if component in port and not _free(port[component]):
            raise TopologyError(f"{component}: port {port[component]} is taken by another process")
        self.pids.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{component}.log"
        # Health checks that read the log look only at what this start wrote.
        (self.pids / f"{component}.log-offset").write_text(str(log_path.stat().st_size if log_path.exists() else 0))
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                self.command(component),
                env=self.env,
                cwd=self.state,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop and kill reach its children too
            )
        (self.pids / f"{component}.pid").write_text(str(process.pid))
        return process.pid

    def signal(self, component: str, signum: int, wait: float = 30) -> bool:
        pid = self.pid(component)
        if pid is None:
            return False
        try:
            # SIGTERM goes to the component alone, which stops its children in order (a Celery worker lets its
            # running tasks finish); SIGKILL takes the whole process group, as a crash would.
            if signum == signal.SIGKILL:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + wait
        while self.pid(component) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        # Whatever of the group outlived its leader (or a leader that would not stop) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while self.pid(component) is not None:
            time.sleep(0.2)
        return True

    def health(self) -> dict[str, dict[str, Any]]:
        report: dict[str, dict[str, Any]] = {}
        for component in ORDER:
            report[component] = {"pid": self.pid(component), "healthy": False}
        code, _ = _status(f"http://127.0.0.1:{self.mlflow_port}/health")
        report["mlflow"]["healthy"] = code == 200
        code, _ = _status(f"http://127.0.0.1:{self.serving_port}/healthz")
        report["model-server"]["healthy"] = code == 200
        code, body = _status(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health")
        report["api-server"]["healthy"] = code == 200
        for component, key in (
            ("scheduler", "scheduler"),
            ("dag-processor", "dag_processor"),
            ("triggerer", "triggerer"),
        ):
            status = (body or {}).get(key, {}).get("status") if isinstance(body, dict) else None
            report[component]["healthy"] = status == "healthy"
        report["celery-worker"]["healthy"] = " ready." in self.log_since_start("celery-worker")
        for item in report.values():
            item["healthy"] = item["healthy"] and item["pid"] is not None
        return report

    def wait_healthy(self, components: tuple[str, ...], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            report = self.health()
            dead = [c for c in components if report[c]["pid"] is None]
            if dead:
                raise TopologyError(f"{', '.join(dead)} exited:\n{self.tail(*dead)}")
            waiting = [c for c in components if not report[c]["healthy"]]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TopologyError(f"not healthy after {timeout:.0f} s: {', '.join(waiting)}\n{self.tail(*waiting)}")
            time.sleep(1)

    def log_since_start(self, component: str) -> str:
        log, offset = self.logs / f"{component}.log", self.pids / f"{component}.log-offset"
        if not log.exists():
            return ""
        with open(log, "rb") as handle:
            handle.seek(int(offset.read_text()) if offset.exists() else 0)
            return handle.read().decode(errors="replace")

    def tail(self, *components: str, chars: int = 4000) -> str:
        parts = []
        for component in components:
            log = self.logs / f"{component}.log"
            text = log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
            parts.append(f"--- {component} ---\n{text}")
        return "\n".join(parts)

    def up(self, timeout: float) -> None:
        self.init()
        for component in ORDER:
            self.start(component)
            if component in ("mlflow", "model-server"):  # the model server reads the registry at start
                self.wait_healthy((component,), timeout)
        self.wait_healthy(ORDER, timeout)

    def down(self) -> None:
        for component in reversed(ORDER):
            self.signal(component, signal.SIGTERM)

    def masked_env(self) -> dict[str, str]:
        shown = {name: value for name, value in self.env.items() if name.startswith(("AIRFLOW", "TFPIPE", "MLFLOW"))}
        return {name: "***" if any(w in name for w in SECRET_WORDS) else value for name, value in sorted(shown.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state", type=Path, default=Path(os.environ.get("TFPIPE_TOPOLOGY_STATE", ROOT / "state" / "production"))
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for components to be healthy")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("up", help="migrate, import pools, publish the DAGs, start every component, wait until healthy")
    sub.add_parser("down", help="stop every component (SIGTERM, then SIGKILL after 30 s)")
    sub.add_parser("status", help="every component's pid and health, as JSON")
    sub.add_parser("env", help="the components' environment, secrets masked")
    publish = sub.add_parser("publish-dags", help="commit the working tree's dags/ to the DAG bundle repository")
    publish.add_argument("--message", default="publish dags")
    for action, text in (("start", "start"), ("stop", "stop (SIGTERM)"), ("kill", "kill (SIGKILL: a crash drill)")):
        one = sub.add_parser(action, help=f"{text} the named components")
        one.add_argument("components", nargs="+", choices=ORDER)
        if action == "stop":
            one.add_argument(
                "--grace", type=float, default=30, help="seconds before SIGKILL (a Celery worker finishes its tasks)"
            )
    args = parser.parse_args(argv)
    try:
        topology = Topology(args.state)
        if args.action == "up":
            topology.up(args.timeout)
            print(json.dumps(topology.health(), indent=2))
        elif args.action == "down":
            topology.down()
        elif args.action == "status":
            print(json.dumps(topology.health(), indent=2))
        elif args.action == "env":
            print(json.dumps(topology.masked_env(), indent=2))
        elif args.action == "publish-dags":
            print(topology.publish_dags(args.message))
        elif args.action == "start":
            for component in args.components:
                topology.start(component)
            topology.wait_healthy(tuple(args.components), args.timeout)
        elif args.action == "stop":
            for component in args.components:
                topology.signal(component, signal.SIGTERM, wait=args.grace)
        elif args.action == "kill":
            for component in args.components:
                topology.signal(component, signal.SIGKILL)
    except TopologyError as error:
        print(f"topology: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
