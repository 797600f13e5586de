"""Canary analysis: is the canary as healthy as the stable model on live traffic?

Pure logic, no Airflow, no TensorFlow: the model server's Prometheus text goes in (two scrapes, the
start and the end of a window), a verdict comes out (Argo Rollouts' model): Successful, Failed,
Inconclusive or Error, with reasons that name the metric, its value and its limit.
"""

from tfpipe.rollout.analysis import AnalysisResult, Verdict, analyze, js_distance
from tfpipe.rollout.metrics import MetricsError, Snapshot, histogram_quantile, parse_metrics

__all__ = [
    "AnalysisResult",
    "MetricsError",
    "Snapshot",
    "Verdict",
    "analyze",
    "histogram_quantile",
    "js_distance",
    "parse_metrics",
]
