"""The tfpipe Airflow plugin, registered through the `airflow.plugins` entry point.

- `operator_extra_links`: the "Report" link of ML stage tasks (RunMLStageOperator attaches it itself).
  In Airflow 3 the API server needs no link class to show a link: the worker stores each link's URL
  as XCom and the API server reads that. Registering it makes it visible in `airflow plugins`. The
  link names no `operators` on purpose: that would make the API server call `get_link` itself,
  where the task SDK's XCom reads cannot work.
- `fastapi_apps`: the artifact viewer, mounted by the API server at /tfpipe, behind Airflow's login.
"""

from airflow.plugins_manager import AirflowPlugin

from tfpipe_airflow.links.artifacts import VIEWER_URL_PREFIX, StageReportLink
from tfpipe_airflow.links.viewer import app as artifact_viewer


class TfpipePlugin(AirflowPlugin):
    name = "tfpipe"
    operator_extra_links = [StageReportLink()]
    fastapi_apps = [{"app": artifact_viewer, "url_prefix": VIEWER_URL_PREFIX, "name": "tfpipe artifact viewer"}]
