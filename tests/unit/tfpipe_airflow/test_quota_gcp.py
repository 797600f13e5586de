"""Google Cloud quotas at the client boundary, no network.

Compute Engine and Service Usage go through the real discovery clients (providers-google's
ComputeEngineHook, googleapiclient with its bundled discovery documents) over an HTTP mock that replays
responses in the APIs' documented shapes: regions.get (compute v1, `quotas` with limit and usage) and
consumerQuotaMetrics.list (serviceusage v1beta1, two pages, per-region buckets). Cloud Monitoring's
client is replaced by one returning TimeSeries parsed from the REST JSON of quota allocation usage.

The responses are written from the APIs' reference documentation (this machine cannot reach Google), with
the fields and value types the APIs return: int64 as strings in Service Usage, numbers in Compute.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from google.cloud import monitoring_v3
from googleapiclient.http import HttpMockSequence

from tfpipe.config import GcpQuotaConfig
from tfpipe.quota.providers import provider_shortages
from tfpipe_airflow.hooks.quota import (
    GoogleCloudQuotaHook,
    GoogleCloudQuotaProvider,
    compute_gpu_metric,
    vertex_gpu_metric,
)

PROJECT, REGION = "tfpipe-example", "us-central1"

REGION_GET = {
    "kind": "compute#region",
    "id": "1000",
    "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
    "name": REGION,
    "description": REGION,
    "status": "UP",
    "zones": [f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{REGION}-{zone}" for zone in "abcf"],
    "quotas": [
        {"metric": "CPUS", "limit": 24, "usage": 18},
        {"metric": "DISKS_TOTAL_GB", "limit": 4096, "usage": 812},
        {"metric": "STATIC_ADDRESSES", "limit": 8, "usage": 0},
        {"metric": "IN_USE_ADDRESSES", "limit": 8, "usage": 3},
        {"metric": "SSD_TOTAL_GB", "limit": 500, "usage": 0},
        {"metric": "INSTANCES", "limit": 24, "usage": 5},
        {"metric": "PREEMPTIBLE_CPUS", "limit": 0, "usage": 0},
        {"metric": "NVIDIA_T4_GPUS", "limit": 4, "usage": 1},
        {"metric": "NVIDIA_V100_GPUS", "limit": 0, "usage": 0},
        {"metric": "C2_CPUS", "limit": 24, "usage": 0},
    ],
    "selfLink": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/regions/{REGION}",
    "supportsPzs": False,
}


SERVICE_PATH = "projects/123456789012/services/aiplatform.googleapis.com"


def _metric(name: str, display: str, limits: list[dict[str, Any]]) -> dict[str, Any]:
    quoted = name.replace("/", "%2F")
    return {
        "name": f"{SERVICE_PATH}/consumerQuotaMetrics/{quoted}",
        "displayName": display,
        "metric": name,
        "unit": limits[0]["unit"],
        "consumerQuotaLimits": [
            {
                "name": f"{SERVICE_PATH}/consumerQuotaMetrics/{quoted}/limits/"
                + limit["unit"].replace("/", "%2F").replace("{", "").replace("}", ""),
                "metric": name,
                "isPrecise": True,
                **limit,
            }
            for limit in limits
        ],
    }


CONSUMER_QUOTA_PAGE_1 = {
    "metrics": [
        _metric(
            "aiplatform.googleapis.com/online_prediction_requests",
            "Online prediction requests per minute per region",
            [
                {
                    "unit": "1/min/{project}/{region}",
                    "quotaBuckets": [{"effectiveLimit": "30000", "defaultLimit": "30000"}],
                }
            ],
        ),
        _metric(
            "aiplatform.googleapis.com/custom_model_training_cpus",
            "Custom model training CPUs for N1/E2 machine types per region",
            [
                {
                    "unit": "1/{project}/{region}",
                    "supportedLocations": [REGION, "europe-west4"],
                    "quotaBuckets": [
                        {"effectiveLimit": "8", "defaultLimit": "8"},
                        {
                            "effectiveLimit": "32",
                            "defaultLimit": "8",
                            "consumerOverride": {
                                "name": "projects/123456789012/services/aiplatform.googleapis.com/"
                                "consumerQuotaMetrics/aiplatform.googleapis.com%2Fcustom_model_training_cpus/"
                                "limits/%2Fproject%2Fregion/consumerOverrides/Cg1RdW90YU92ZXJyaWRl",
                                "overrideValue": "32",
                                "dimensions": {"region": REGION},
                                "metric": "aiplatform.googleapis.com/custom_model_training_cpus",
                                "unit": "1/{project}/{region}",
                            },
                            "dimensions": {"region": REGION},
                        },
                    ],
                }
            ],
        ),
    ],
    "nextPageToken": "CiRhaXBsYXRmb3JtLmdvb2dsZWFwaXMuY29tL2N1c3RvbV9tb2RlbA",  # pragma: allowlist secret
}
CONSUMER_QUOTA_PAGE_2 = {
    "metrics": [
        _metric(
            "aiplatform.googleapis.com/custom_model_training_nvidia_t4_gpus",
            "Custom model training Nvidia T4 GPUs per region",
            [{"unit": "1/{project}/{region}", "quotaBuckets": [{"effectiveLimit": "2", "defaultLimit": "2"}]}],
        ),
        _metric(
            "aiplatform.googleapis.com/custom_model_training_nvidia_a100_gpus",
            "Custom model training Nvidia A100 GPUs per region",
            [{"unit": "1/{project}/{region}", "quotaBuckets": [{"effectiveLimit": "-1", "defaultLimit": "0"}]}],
        ),
    ]
}


def _usage_series(metric: str, values: list[tuple[str, int]]) -> monitoring_v3.TimeSeries:
    return monitoring_v3.TimeSeries.from_json(
        json.dumps(
            {
                "metric": {
                    "type": "serviceruntime.googleapis.com/quota/allocation/usage",
                    "labels": {"quota_metric": metric},
                },
                "resource": {
                    "type": "consumer_quota",
                    "labels": {"project_id": PROJECT, "service": "aiplatform.googleapis.com", "location": REGION},
                },
                "metricKind": "GAUGE",
                "valueType": "INT64",
                "points": [
                    {"interval": {"startTime": end, "endTime": end}, "value": {"int64Value": str(value)}}
                    for end, value in values
                ],
            }
        )
    )


class RecordingHttp(HttpMockSequence):
    def __init__(self, responses: list[dict[str, Any]]) -> None:
        super().__init__([({"status": "200"}, json.dumps(body)) for body in responses])
        self.requests: list[tuple[str, str]] = []

    def request(self, uri, method="GET", *args, **kwargs):
        self.requests.append((method, uri))
        return super().request(uri, method, *args, **kwargs)


class FakeMetricClient:
    def __init__(self, series: dict[str, list[monitoring_v3.TimeSeries]]) -> None:
        self.series = series
        self.requests: list[dict[str, Any]] = []

    def list_time_series(self, request: dict[str, Any]) -> list[monitoring_v3.TimeSeries]:
        self.requests.append(request)
        metric = request["filter"].split('metric.labels.quota_metric = "')[1].split('"')[0]
        return self.series.get(metric, [])


@pytest.fixture(autouse=True)
def gcp_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({"conn_type": "google_cloud_platform"}))


def test_compute_engine_regional_quotas_through_compute_engine_hook():
    http = RecordingHttp([REGION_GET])
    config = GcpQuotaConfig(project_id=PROJECT, region=REGION, service="compute_engine")
    provider = GoogleCloudQuotaProvider(config)
    with mock.patch("airflow.providers.google.cloud.hooks.compute.ComputeEngineHook._authorize", return_value=http):
        capacity = provider.capacity()
    assert http.requests == [
        ("GET", f"https://compute.googleapis.com/compute/v1/projects/{PROJECT}/regions/{REGION}?alt=json")
    ]
    assert (capacity["cpu"].limit, capacity["cpu"].used, capacity["cpu"].free) == (24, 18, 6)
    assert (capacity["gpu"].limit, capacity["gpu"].free) == (4, 3)
    assert "memory_gib" not in capacity, "Google Cloud has no memory quota"
    [shortage] = provider_shortages(provider.name, capacity, {"cpu": 8, "memory_gib": 32})
    assert shortage.describe() == (
        "cpu: asked 8 cores, 6 cores free of the provider gcp-compute-engine:tfpipe-example/us-central1's 24 cores; "
        "18 cores in use (CPUS Compute Engine quota in us-central1; used outside the ledger)"
    )


def test_vertex_ai_quotas_from_service_usage_limits_and_monitoring_usage():
    http = RecordingHttp([CONSUMER_QUOTA_PAGE_1, CONSUMER_QUOTA_PAGE_2])
    metrics = FakeMetricClient(
        {
            "aiplatform.googleapis.com/custom_model_training_cpus": [
                _usage_series(
                    "aiplatform.googleapis.com/custom_model_training_cpus",
                    [("2024-05-01T10:02:00Z", 28), ("2024-05-01T10:01:00Z", 12)],
                )
            ]
        }
    )
    hook = GoogleCloudQuotaHook()
    provider = GoogleCloudQuotaProvider(GcpQuotaConfig(project_id=PROJECT, region=REGION), hook=hook)
    with (
        mock.patch.object(GoogleCloudQuotaHook, "_authorize", return_value=http),
        mock.patch.object(GoogleCloudQuotaHook, "get_metric_client", return_value=metrics),
    ):
        capacity = provider.capacity()
    first, second = http.requests
    assert first[1].startswith(
        f"https://serviceusage.googleapis.com/v1beta1/projects/{PROJECT}/services/aiplatform.googleapis.com/"
        "consumerQuotaMetrics?view=BASIC"
    )
    assert "pageToken=CiRhaXBsYXRmb3JtLmdvb2dsZWFwaXMuY29tL2N1c3RvbV9tb2RlbA" in second[1]  # pragma: allowlist secret
    # The region's override (32), not the default bucket (8); the newest point of usage (28), not an older one.
    assert (capacity["cpu"].limit, capacity["cpu"].used, capacity["cpu"].free) == (32, 28, 4)
    assert (capacity["gpu"].limit, capacity["gpu"].used) == (2, 0), "no usage series: nothing allocated"
    cpu_request = next(request for request in metrics.requests if "custom_model_training_cpus" in request["filter"])
    assert cpu_request["name"] == f"projects/{PROJECT}"
    assert 'resource.type = "consumer_quota"' in cpu_request["filter"]
    assert f'resource.labels.location = "{REGION}"' in cpu_request["filter"]
    assert provider_shortages(provider.name, capacity, {"cpu": 4}) == []
    assert [s.resource for s in provider_shortages(provider.name, capacity, {"cpu": 8, "gpu": 1})] == ["cpu"]


def test_unlimited_and_rate_quotas_are_not_capacity():
    http = RecordingHttp([CONSUMER_QUOTA_PAGE_1, CONSUMER_QUOTA_PAGE_2])
    with mock.patch.object(GoogleCloudQuotaHook, "_authorize", return_value=http):
        limits = GoogleCloudQuotaHook().get_consumer_quota_limits(
            PROJECT,
            "aiplatform.googleapis.com",
            [
                "aiplatform.googleapis.com/online_prediction_requests",
                "aiplatform.googleapis.com/custom_model_training_nvidia_a100_gpus",
                "aiplatform.googleapis.com/custom_model_training_cpus",
            ],
            "europe-west4",
        )
    assert limits == {"aiplatform.googleapis.com/custom_model_training_cpus": 8}, "europe-west4: the default bucket"


@pytest.mark.parametrize(
    ("accelerator", "compute", "vertex"),
    [
        ("NVIDIA_TESLA_T4", "NVIDIA_T4_GPUS", "aiplatform.googleapis.com/custom_model_training_nvidia_t4_gpus"),
        ("NVIDIA_TESLA_A100", "NVIDIA_A100_GPUS", "aiplatform.googleapis.com/custom_model_training_nvidia_a100_gpus"),
        ("NVIDIA_L4", "NVIDIA_L4_GPUS", "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus"),
        (
            "NVIDIA_H100_80GB",
            "NVIDIA_H100_GPUS",
            "aiplatform.googleapis.com/custom_model_training_nvidia_h100_80gb_gpus",
        ),
    ],
)
def test_accelerator_types_map_to_their_quota_metrics(accelerator, compute, vertex):
    assert compute_gpu_metric(accelerator) == compute
    assert vertex_gpu_metric(accelerator) == vertex
