"""The "Report" extra link and the artifact viewer it opens.

Link URLs are checked with only the XCom read mocked. The viewer is checked with FastAPI's TestClient
and real Airflow JWTs signed and validated by the simple auth manager (only the revoked-token lookup,
a database query, is stubbed in-process). The integration tests run the real thing in subprocesses
with their own AIRFLOW_HOME: `airflow plugins` lists the link and the app, and the API server's own
app (database migrated) mounts the viewer at /tfpipe behind its authentication.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import CONFIG_PATH, PROJECT_ROOT
from tfpipe.config import ExecutionConfig, LocalExecution
from tfpipe.errors import ConfigError
from tfpipe_airflow.links import artifacts, viewer
from tfpipe_airflow.links.artifacts import StageReportLink, artifact_root, report_url
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator

TI_KEY = TaskInstanceKey(dag_id="chicago_taxi_training", task_id="validate_examples", run_id="manual__1", try_number=1)
RUN = "chicago_taxi/span=2013-01/run=manual__1"
REPORT_HTML = "<!doctype html><title>Data validation</title><h1>Data validation: 2013-01</h1>"
SECRET = "outside the artifact root"  # pragma: allowlist secret
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


# --- the link ----------------------------------------------------------------------------------------


@pytest.fixture
def artifact_env(tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("TFPIPE_ARTIFACT_ROOT", str(root))
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    return root


def link_for(report_uri):
    with mock.patch.object(artifacts.XCom, "get_value", return_value=report_uri) as get_value:
        url = StageReportLink().get_link(SimpleNamespace(stage="validate"), ti_key=TI_KEY)
    get_value.assert_called_once_with(ti_key=TI_KEY, key="report_uri")
    return url


def test_stages_that_write_no_report_are_not_asked_for_one():
    # Asking would log an "XCom not found" error line in every such task's log.
    with mock.patch.object(artifacts.XCom, "get_value") as get_value:
        assert StageReportLink().get_link(SimpleNamespace(stage="train"), ti_key=TI_KEY) == ""
    get_value.assert_not_called()


def test_the_link_is_the_report_button_of_every_stage_task():
    link = StageReportLink()
    assert link.name == "Report"
    assert link.xcom_key == "_link_StageReportLink"  # where the worker stores the URL for the API server
    assert any(isinstance(each, StageReportLink) for each in RunMLStageOperator.operator_extra_links)


def test_a_gs_report_opens_in_the_cloud_console(artifact_env):
    url = link_for(f"gs://tfpipe-bucket/{RUN}/validation/report.html")
    assert url == f"https://storage.cloud.google.com/tfpipe-bucket/{RUN}/validation/report.html"


def test_a_local_report_opens_in_the_artifact_viewer(artifact_env):
    assert link_for(str(artifact_env / RUN / "validation" / "report.html")) == (
        f"/tfpipe/artifacts/{RUN}/validation/report.html"
    )


def test_the_local_link_follows_the_path_airflow_is_served_under(artifact_env, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/ml/")
    assert link_for(f"file://{artifact_env}/{RUN}/report.html") == f"/ml/tfpipe/artifacts/{RUN}/report.html"


def test_no_report_no_link(artifact_env):
    assert link_for(None) == ""
    assert link_for("") == ""


def test_a_local_report_outside_the_artifact_root_gets_no_link(artifact_env, tmp_path):
    assert link_for(str(tmp_path / "elsewhere" / "report.html")) == ""
    assert link_for(str(artifact_env) + "-other/report.html") == ""


def test_urls_are_quoted():
    assert report_url("gs://b/a b/r#1.html", root=None) == "https://storage.cloud.google.com/b/a%20b/r%231.html"
    assert report_url("/art/x/<r>?.html", root="/art") == "/tfpipe/artifacts/x/%3Cr%3E%3F.html"
    assert report_url("s3://bucket/report.html", root="/art") == ""
    assert report_url("/art/report.html", root=None) == ""


def test_the_link_survives_dag_serialization_as_the_api_server_sees_it():
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("links_serialization", schedule=None) as dag:
        RunMLStageOperator(
            task_id="validate", stage="validate", execution=ExecutionConfig(local=LocalExecution(python="python3"))
        )
    task = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task("validate")
    assert [(link.name, link.xcom_key) for link in task.operator_extra_links] == [
        ("Report", "_link_StageReportLink"),
        ("TensorBoard", "_link_TensorBoardLink"),
    ]


# --- the artifact root ----------------------------------------------------------------------------------


def test_the_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TFPIPE_PROJECT_ROOT", raising=False)
    dags = tmp_path / "project" / "dags"
    assert artifact_root({"TFPIPE_ARTIFACT_ROOT": "/srv/artifacts"}, dags_folder=dags) == "/srv/artifacts"
    assert artifact_root({"TFPIPE_ARTIFACT_ROOT": "gs://b/tfpipe"}, dags_folder=dags) == "gs://b/tfpipe"
    # Relative, as in the pipeline configs: against the project root (the DAGs folder's parent).
    assert artifact_root({"TFPIPE_ARTIFACT_ROOT": "state/art"}, dags_folder=dags) == str(tmp_path / "project/state/art")


def test_the_root_falls_back_to_the_pipeline_configs(monkeypatch):
    for name in ("TFPIPE_ARTIFACT_ROOT", "TFPIPE_PROJECT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    assert artifact_root({}, dags_folder=PROJECT_ROOT / "dags") == str(PROJECT_ROOT / "state" / "artifacts")


def test_configs_naming_different_roots_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TFPIPE_ARTIFACT_ROOT", raising=False)
    text = CONFIG_PATH.read_text()
    assert "root: ${TFPIPE_ARTIFACT_ROOT:-state/artifacts}" in text
    configs = tmp_path / "dags" / "configs"
    configs.mkdir(parents=True)
    for name in ("one", "two"):
        root_line = f"root: /srv/{name}"
        (configs / f"{name}.yaml").write_text(text.replace("root: ${TFPIPE_ARTIFACT_ROOT:-state/artifacts}", root_line))
    with pytest.raises(ConfigError, match="different artifact roots"):
        artifact_root({}, dags_folder=tmp_path / "dags")
    assert artifact_root({}, dags_folder=tmp_path / "nothing") is None


# --- the viewer -----------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """An artifact root with a run's outputs, a file outside it, and symlinks in and out."""
    root = tmp_path / "artifacts"
    validation = root / RUN / "validation"
    validation.mkdir(parents=True)
    (validation / "report.html").write_text(REPORT_HTML)
    (validation / "findings.json").write_text('[{"rule": "drift"}]')
    (validation / "style.css").write_text("body { color: black }")
    (validation / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    (validation / "schema.pbtxt").write_text('feature { name: "fare" type: FLOAT }')
    (validation / "<b>&'odd\".txt").write_text("odd")
    (validation / "latest.html").symlink_to(validation / "report.html")
    (tmp_path / "secret.txt").write_text(SECRET)
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "escape_dir").symlink_to(tmp_path)
    return root


@pytest.fixture
def auth(monkeypatch):
    """The simple auth manager, as the API server initializes it; returns a token minter."""
    from airflow.api_fastapi import app as api_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-secret-" + "x" * 64)
    # Token validation also looks the token up in the revoked tokens table: no database in unit tests.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kwargs: False))
    monkeypatch.setattr(api_app._AuthManagerState, "instance", None)
    manager = api_app.create_auth_manager()

    def token(role):
        return manager.generate_jwt(SimpleAuthManagerUser(username=f"{role}-user", role=role))

    return token


@pytest.fixture
def client(tree, auth):
    """The viewer mounted as the API server mounts plugin apps, with a viewer's token."""
    server = FastAPI()
    server.mount("/tfpipe", viewer.create_app(tree))
    return TestClient(server, headers={"Authorization": f"Bearer {auth('viewer')}"})


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("report.html", "text/html; charset=utf-8"),
        ("findings.json", "application/json"),
        ("style.css", "text/css; charset=utf-8"),
        ("chart.png", "image/png"),
        ("schema.pbtxt", "text/plain; charset=utf-8"),
    ],
)
def test_serves_a_file_under_the_root_with_its_content_type(client, tree, name, content_type):
    response = client.get(f"/tfpipe/artifacts/{RUN}/validation/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (tree / RUN / "validation" / name).read_bytes()
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("sandbox")


def test_serves_a_symlink_that_stays_inside_the_root(client):
    response = client.get(f"/tfpipe/artifacts/{RUN}/validation/latest.html")
    assert response.status_code == 200 and response.text == REPORT_HTML


def test_lists_a_folder_with_escaped_names(client):
    response = client.get(f"/tfpipe/artifacts/{RUN}/validation/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert '<a href="./report.html">report.html</a>' in page
    assert '<a href="./schema.pbtxt">schema.pbtxt</a>' in page
    assert '<a href="../">../</a>' in page
    assert "<b>" not in page
    assert "&lt;b&gt;&amp;&#x27;odd&quot;.txt</a>" in page
    assert 'href="./%3Cb%3E%26%27odd%22.txt"' in page
    odd = client.get(f"/tfpipe/artifacts/{RUN}/validation/%3Cb%3E%26%27odd%22.txt")
    assert odd.status_code == 200 and odd.text == "odd"


def test_a_listing_leaves_out_symlinks_leading_outside(client):
    page = client.get("/tfpipe/artifacts/").text
    assert "chicago_taxi/" in page
    assert "escape" not in page
    assert '<a href="../">' not in page  # nothing above the root


def test_a_folder_without_its_slash_redirects_to_it(client):
    response = client.get(f"/tfpipe/artifacts/{RUN}/validation", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "validation/"
    assert client.get(f"/tfpipe/artifacts/{RUN}/validation").url.path == f"/tfpipe/artifacts/{RUN}/validation/"
    assert client.get("/tfpipe/artifacts").url.path == "/tfpipe/artifacts/"


@pytest.mark.parametrize(
    "path",
    [
        "..%2Fsecret.txt",
        "%2e%2e/secret.txt",
        f"{RUN}/..%2F..%2F..%2F..%2F..%2Fsecret.txt",
        ".%2e/.%2e/.%2e/etc/passwd",
        "/etc/passwd",  # //etc/passwd: an absolute path
        "%2Fetc%2Fpasswd",
        "escape.txt",  # a symlink to a file outside
        "escape_dir/secret.txt",  # through a symlink to a folder outside
        "escape_dir/",
        "chicago_taxi/%2e/span=2013-01/",
        "missing.html",
        "report%00.html",
    ],
)
def test_refuses_paths_leading_outside_the_root(client, path):
    response = client.get(f"/tfpipe/artifacts/{path}")
    assert response.status_code == 404
    assert SECRET not in response.text and "root:" not in response.text


def test_resolve_refuses_escapes_even_when_called_directly(tree):
    from fastapi import HTTPException

    for relative in ("../secret.txt", "/etc/passwd", "escape.txt", "escape_dir/secret.txt", "a\\..\\b", "x\x00"):
        with pytest.raises(HTTPException) as refused:
            viewer.resolve_artifact(tree, relative)
        assert refused.value.status_code == 404
    assert viewer.resolve_artifact(tree, f"{RUN}/validation/report.html") == tree / RUN / "validation" / "report.html"


def test_refuses_requests_without_a_valid_airflow_token(client, auth):
    url = f"/tfpipe/artifacts/{RUN}/validation/report.html"
    anonymous = TestClient(client.app)
    assert anonymous.get(url).status_code == 401
    assert anonymous.get("/tfpipe/artifacts/..%2Fsecret.txt").status_code == 401  # authentication comes first
    assert anonymous.get(url, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    forged = auth("viewer")[:-4] + "AAAA"
    assert anonymous.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 403
    # A valid token of a user with no role: authenticated, but not allowed to read task outputs.
    assert anonymous.get(url, headers={"Authorization": f"Bearer {auth(None)}"}).status_code == 403


def test_accepts_the_ui_session_cookie(client, auth):
    browser = TestClient(client.app, cookies={"_token": auth("viewer")})
    response = browser.get(f"/tfpipe/artifacts/{RUN}/validation/report.html")
    assert response.status_code == 200 and response.text == REPORT_HTML


def test_without_a_local_root_nothing_is_served(auth, monkeypatch):
    monkeypatch.setenv("TFPIPE_ARTIFACT_ROOT", "gs://tfpipe-bucket/artifacts")
    app = TestClient(viewer.create_app(), headers={"Authorization": f"Bearer {auth('viewer')}"})
    response = app.get("/artifacts/")
    assert response.status_code == 404 and "Cloud console" in response.text


# --- in a real Airflow ----------------------------------------------------------------------------------


@pytest.fixture
def airflow_env(tmp_path, tree):
    home = tmp_path / "airflow-home"
    (home / "plugins").mkdir(parents=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "TFPIPE_ARTIFACT_ROOT": str(tree),
    }
    env.pop("AIRFLOW__API__BASE_URL", None)
    return env


def run(argv, env, timeout=300):
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.integration
def test_airflow_loads_the_plugin_with_the_link_and_the_viewer(airflow_env):
    out = run([sys.executable, "-m", "airflow", "plugins", "--output", "json"], airflow_env)
    plugins = {plugin["name"]: plugin for plugin in json.loads(out[out.index("[") :])}
    tfpipe = plugins["tfpipe"]
    assert tfpipe["operator_extra_links"] == ["<tfpipe_airflow.links.artifacts.StageReportLink object>"]
    assert [(app["url_prefix"], app["app"]) for app in tfpipe["fastapi_apps"]] == [
        ("/tfpipe", "fastapi.applications.FastAPI")
    ]
    assert "tfpipe_airflow.plugin:TfpipePlugin" in tfpipe["source"]


PROBE_DAG = """
import os
from airflow.sdk import DAG
from tfpipe.config import ExecutionConfig, LocalExecution
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator

class ValidateStandIn(RunMLStageOperator):
    # The real operator's result handling and extra link, without the ML runtime.
    def execute(self, context):
        return {"passed": True, "report_uri": os.environ["PROBE_REPORT_URI"]}

with DAG("links_probe", schedule=None) as dag:
    execution = ExecutionConfig(local=LocalExecution(python="python3"))
    ValidateStandIn(task_id="validate", stage="validate", execution=execution)
"""

PROBE = """
import json, os, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app, get_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

sys.path.insert(0, os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
from probe_dag import dag

# The task runs in a real task runner, which stores the link's URL as XCom when the task ends.
run_id = dag.test().run_id
client = TestClient(create_app("core"))
token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="v", role="viewer"))
viewer = {"Authorization": "Bearer " + token}
links = client.get(f"/api/v2/dags/links_probe/dagRuns/{run_id}/taskInstances/validate/links", headers=viewer).json()
url = links["extra_links"]["Report"]
results = {
    "url": url,
    "anonymous": client.get(url).status_code,
    "bearer": client.get(url, headers=viewer).text,
    "cookie": TestClient(client.app, cookies={"_token": token}).get(url).text,
    "escape": client.get("/tfpipe/artifacts/escape.txt", headers=viewer).status_code,
}
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
results["all_admins"] = TestClient(create_app("core")).get(url).status_code
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.integration
def test_one_click_from_the_task_to_its_report_in_a_real_airflow(airflow_env, tree, tmp_path):
    dags = tmp_path / "probe-dags"
    dags.mkdir()
    (dags / "probe_dag.py").write_text(PROBE_DAG)
    env = {
        **airflow_env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "PROBE_REPORT_URI": str(tree / RUN / "validation" / "report.html"),
    }
    run([sys.executable, "-m", "airflow", "db", "migrate"], env)
    out = run([sys.executable, "-c", PROBE], env)
    results = json.loads(out.split("RESULTS ", 1)[1].splitlines()[0])
    assert results == {
        "url": f"/tfpipe/artifacts/{RUN}/validation/report.html",
        "anonymous": 401,
        "bearer": REPORT_HTML,
        "cookie": REPORT_HTML,
        "escape": 404,
        "all_admins": 200,
    }
