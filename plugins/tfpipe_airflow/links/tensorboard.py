"""The "TensorBoard" extra link of training tasks: TensorBoard's time series, filtered to this run's logs.

TensorBoard serves the whole artifact root (`make tensorboard` locally; the same root on gs:// in
production), so each run's logs are one group of TensorBoard runs named by their path under the root.
The link filters to that path with TensorBoard's `runFilter` URL parameter.
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from tfpipe_airflow.links.artifacts import artifact_root

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

TENSORBOARD_ARGUMENT = "tensorboard_uri"


def tensorboard_url(base_url: str, logs_uri: str, root: str | None) -> str:
    """TensorBoard's URL showing only the runs under `logs_uri`; "" if it is not under `root`."""
    if not base_url or not logs_uri or not root:
        return ""
    if "://" in root:
        if not logs_uri.startswith(root.rstrip("/") + "/"):
            return ""
        relative = logs_uri[len(root.rstrip("/")) + 1 :]
    else:
        relative = posixpath.relpath(posixpath.normpath(logs_uri), posixpath.normpath(root))
        if relative == ".." or relative.startswith("../"):
            return ""
    pattern = "^" + re.escape(relative.strip("/")) + "/"
    return f"{base_url.rstrip('/')}/?runFilter={quote(pattern, safe='')}#timeseries"


class TensorBoardLink(BaseOperatorLink):
    """Opens TensorBoard on the task's `tensorboard_uri` argument, at the operator's `tensorboard_url`."""

    name = "TensorBoard"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        base_url = getattr(operator, "tensorboard_url", None)
        arguments = {
            **(getattr(operator, "arguments", None) or {}),
            **(getattr(operator, "extra_arguments", None) or {}),
        }
        logs_uri = arguments.get(TENSORBOARD_ARGUMENT)
        if not base_url or not isinstance(logs_uri, str) or "{{" in logs_uri:
            return ""  # not rendered: the task has not run
        return tensorboard_url(base_url, logs_uri, artifact_root())
