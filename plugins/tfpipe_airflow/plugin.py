"""The tfpipe Airflow plugin, registered through the `airflow.plugins` entry point."""

from airflow.plugins_manager import AirflowPlugin


class TfpipePlugin(AirflowPlugin):
    name = "tfpipe"
