"""The "Report" extra link of ML stage tasks, and where artifacts on local disk are served from.

A stage that writes a report for people (the data validation HTML report) returns its location as
`report_uri`, which lands in its own XCom (the operator pushes each key of the result). The link turns
it into something a browser opens:

- `gs://bucket/path`: the Cloud console's authenticated object URL, `https://storage.cloud.google.com/bucket/path`;
- a local path under the artifact root: `/tfpipe/artifacts/<path relative to the root>`, served by this
  plugin's artifact viewer (tfpipe_airflow.links.viewer) inside the Airflow API server, behind its login;
- no report, or a local path the viewer could not serve: no link.

In Airflow 3 `get_link` runs on the worker, when the task finishes (successful or not): the task runner
stores the URL as the XCom `_link_StageReportLink` and the API server shows that, without importing
this class. So the artifact root must be the same for workers and the API server (it is, when both
read the same pipeline config or `TFPIPE_ARTIFACT_ROOT`).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink, conf
from airflow.sdk.execution_time.xcom import XCom

from tfpipe.config import load_pipeline_config, project_root_for
from tfpipe.errors import ConfigError

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

REPORT_XCOM_KEY = "report_uri"
# Stages whose result names a report for people; other stages are not asked (a missing XCom is an
# error line in the task log).
STAGES_WITH_REPORTS = frozenset({"validate", "evaluate", "monitor"})
ARTIFACT_ROOT_ENV = "TFPIPE_ARTIFACT_ROOT"
# The viewer's FastAPI app is mounted at VIEWER_URL_PREFIX and serves files under ARTIFACTS_ROUTE.
VIEWER_URL_PREFIX = "/tfpipe"
ARTIFACTS_ROUTE = "/artifacts"
GCS_CONSOLE_URL = "https://storage.cloud.google.com/"
# Characters left as they are in URL paths: RFC 3986 allows them in a path segment, and artifact
# folders are named `span=2013-01`, so links stay readable.
PATH_SAFE = "/=:@"


def artifact_root(
    environ: Mapping[str, str] | None = None, dags_folder: str | os.PathLike[str] | None = None
) -> str | None:
    """The artifact root: a local folder (absolute) or a URI such as gs://bucket/prefix; None if unknown.

    1. `$TFPIPE_ARTIFACT_ROOT` when set; a relative path is taken against the project root, as the
       pipeline configs do.
    2. Otherwise the `artifacts.root` of the pipeline configs `<DAGs folder>/configs/*.yaml` (Airflow's
       `[core] dags_folder`), loaded like the DAG files load them. Configs that fail to load are skipped.
       Configs naming different roots are refused (ConfigError): set `TFPIPE_ARTIFACT_ROOT` then.
    """
    environ = os.environ if environ is None else environ
    folder = Path(dags_folder if dags_folder is not None else conf.get("core", "dags_folder"))
    value = environ.get(ARTIFACT_ROOT_ENV, "")
    if value:
        if "://" in value:
            return value
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = project_root_for(folder / "configs" / "_") / path
        return os.path.abspath(path)
    roots = set()
    for config_path in sorted((folder / "configs").glob("*.yaml")):
        try:
            roots.add(load_pipeline_config(config_path).artifacts.root)
        except ConfigError as exc:
            log.warning("artifact root: skipping %s: %s", config_path, exc)
    if len(roots) > 1:
        raise ConfigError(
            f"the pipeline configs in {folder / 'configs'} name different artifact roots {sorted(roots)}: "
            f"set {ARTIFACT_ROOT_ENV} to the one to serve"
        )
    return roots.pop() if roots else None


def local_artifact_root(**kwargs: Any) -> Path | None:
    """The artifact root when it is a local folder (what the viewer can serve), else None."""
    root = artifact_root(**kwargs)
    if root is None or ("://" in root and not root.startswith("file://")):
        return None
    return Path(os.path.abspath(root.removeprefix("file://")))


def api_base_path() -> str:
    """The path part of `[api] base_url` ("" when Airflow is served at the root of its host)."""
    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def viewer_url(relative: str, base_path: str = "") -> str:
    """The viewer's URL of a path relative to the artifact root."""
    return f"{base_path}{VIEWER_URL_PREFIX}{ARTIFACTS_ROUTE}/{quote(relative.lstrip('/'), safe=PATH_SAFE)}"


def report_url(uri: str, *, root: str | os.PathLike[str] | None, base_path: str = "") -> str:
    """Where a browser opens the artifact `uri`; "" when nothing can show it.

    :param root: the local artifact root (see local_artifact_root); local artifacts outside it get no URL.
    :param base_path: the path Airflow is served under (see api_base_path).
    """
    uri = uri.strip()
    if not uri:
        return ""
    if uri.startswith("gs://"):
        bucket_and_object = uri.removeprefix("gs://")
        return GCS_CONSOLE_URL + quote(bucket_and_object, safe=PATH_SAFE) if bucket_and_object else ""
    if uri.startswith(("https://", "http://")):
        return uri
    if "://" in uri and not uri.startswith("file://"):
        log.warning("no viewer for the artifact %s: only gs:// and local artifacts get a link", uri)
        return ""
    if root is None:
        log.warning("no link to %s: the artifact root is not a local folder (set %s)", uri, ARTIFACT_ROOT_ENV)
        return ""
    path = posixpath.normpath(os.path.abspath(uri.removeprefix("file://")))
    base = posixpath.normpath(os.path.abspath(root))
    relative = posixpath.relpath(path, base)
    if relative == ".." or relative.startswith("../"):
        log.warning("no link to %s: it is outside the artifact root %s", uri, base)
        return ""
    return viewer_url("" if relative == "." else relative, base_path)


class StageReportLink(BaseOperatorLink):
    """The "Report" button of a stage task: opens the `report_uri` of the stage's result."""

    name = "Report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        if getattr(operator, "stage", None) not in STAGES_WITH_REPORTS:
            return ""
        report_uri = XCom.get_value(ti_key=ti_key, key=REPORT_XCOM_KEY)
        if not report_uri or not isinstance(report_uri, str):
            return ""
        root = None if report_uri.startswith("gs://") else local_artifact_root()
        return report_url(report_uri, root=root, base_path=api_base_path())
