"""SpanLandedSensor: a scheduled run waits for its span of data to land instead of failing.

The monthly run for span 2026-10 starts on 2026-11-01, but the data may land hours later. The
sensor reschedules itself (holding no worker slot between checks) until the span's folder holds a
CSV file, then lets the pipeline go; a run on data a person named does not wait. The landing area
may be a local folder or object storage (gs://), read through Airflow's ObjectStoragePath.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, Context, ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tfpipe.data.spans import span_folder


def _storage_path(uri: str) -> ObjectStoragePath:
    return ObjectStoragePath(uri if "://" in uri else f"file://{uri}")


class SpanLandedSensor(BaseSensorOperator):
    """Wait until `<landing_uri>/span=<span>/` holds at least one .csv file.

    :param landing_uri: the landing area (templated).
    :param span: the span to wait for, YYYY-MM (templated).
    :param data_uri: data a person named for this run; when set there is nothing to wait for.
    """

    template_fields = ("landing_uri", "span", "data_uri")
    ui_color = "#e0f0ff"

    def __init__(self, *, landing_uri: str, span: str, data_uri: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.landing_uri = landing_uri
        self.span = span
        self.data_uri = data_uri

    def poke(self, context: Context) -> bool:
        if self.data_uri:
            self.log.info("This run uses the named data %s; no span to wait for", self.data_uri)
            return True
        if not self.span:
            raise AirflowFailException("This run has neither a data_uri param nor a data interval to take a span from")
        folder = _storage_path(self.landing_uri) / span_folder(self.span)
        if not folder.is_dir():
            self.log.info("Span %s has not landed yet: %s does not exist", self.span, folder)
            return False
        files = sorted(path.name for path in folder.iterdir() if path.name.endswith(".csv"))
        if not files:
            self.log.info("Span %s folder %s holds no .csv file yet", self.span, folder)
            return False
        self.log.info("Span %s has landed: %s", self.span, ", ".join(files))
        return True
