"""Who a training process is, from each place a cluster can be described."""

from __future__ import annotations

import json
import socket

import pytest

from tfpipe.config import TrainingConfig
from tfpipe.training import cluster


def test_vertex_ai_tf_config_is_taken_as_it_is():
    config = {
        "cluster": {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"]},
        "task": {"type": "worker", "index": 0},
    }
    found = cluster.tf_config_from_environment({"TF_CONFIG": json.dumps(config)})
    assert found == config
    assert not cluster.is_chief(found), "with a chief in the cluster, worker 0 is not it"
    assert cluster.is_chief({**config, "task": {"type": "chief", "index": 0}})
    assert cluster.cluster_size(found) == 3


def test_an_indexed_kubernetes_job_gets_its_tf_config_from_its_index():
    environ = {"TFPIPE_WORKER_HOSTS": "job-0.svc:2222,job-1.svc:2222", "JOB_COMPLETION_INDEX": "1"}
    found = cluster.tf_config_from_environment(environ)
    assert found == {
        "cluster": {"worker": ["job-0.svc:2222", "job-1.svc:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert not cluster.is_chief(found)
    assert cluster.is_chief(cluster.tf_config_from_environment({**environ, "JOB_COMPLETION_INDEX": "0"}))
    with pytest.raises(ValueError, match="outside the 2 hosts"):
        cluster.tf_config_from_environment({**environ, "JOB_COMPLETION_INDEX": "2"})


def test_no_cluster_means_the_local_launcher_and_a_single_chief():
    assert cluster.tf_config_from_environment({}) is None
    assert cluster.is_chief(None) and cluster.cluster_size(None) == 1
    with pytest.raises(ValueError, match="'cluster' and 'task'"):
        cluster.tf_config_from_environment({"TF_CONFIG": '{"cluster": {}}'})


def test_loopback_hosts_are_distinct_free_ports():
    hosts = cluster.loopback_hosts(3)
    assert len(set(hosts)) == 3 and all(h.startswith("127.0.0.1:") for h in hosts)
    for host in hosts:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", int(host.split(":")[1])))  # free again once chosen


def test_the_training_config_refuses_settings_that_could_never_run():
    with pytest.raises(ValueError, match=r"tuning.pool_slots \(1\) is less than workers \(2\)"):
        TrainingConfig.model_validate({"workers": 2, "tuning": {"pool_slots": 1}})
    with pytest.raises(ValueError, match=r"split.shards \(2\) is less than workers \(4\)"):
        TrainingConfig.model_validate({"workers": 4, "tuning": {"pool_slots": 4}, "split": {"shards": 2}})
    with pytest.raises(ValueError, match="unknown hyperparameters \\['layers'\\]"):
        TrainingConfig.model_validate({"tuning": {"search_space": {"layers": [1, 2]}}})
    with pytest.raises(ValueError, match="more than max_trials"):
        TrainingConfig.model_validate({"tuning": {"search_space": {"epochs": [1, 2, 3]}, "max_trials": 2}})
    with pytest.raises(ValueError, match="learning_rate"):
        TrainingConfig.model_validate({"tuning": {"search_space": {"learning_rate": [0.1, -1]}}})
