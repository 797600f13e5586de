"""Who this training process is: TF_CONFIG from wherever the cluster was described.

- Vertex AI sets `TF_CONFIG` on every replica of a custom job (pool 0 is the chief).
- A Kubernetes Indexed Job gives each pod `JOB_COMPLETION_INDEX`; our job spec adds
  `TFPIPE_WORKER_HOSTS`, the stable DNS names of every pod, index 0 first.
- Locally the training stage starts the workers itself on loopback and sets `TF_CONFIG` for each.

No TensorFlow here: the local launcher uses this module without paying for the import.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

WORKER_HOSTS_VARIABLE = "TFPIPE_WORKER_HOSTS"
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"


def tf_config_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The cluster this process belongs to, or None when it is not (yet) part of one."""
    if environ.get("TF_CONFIG"):
        config = json.loads(environ["TF_CONFIG"])
        if "cluster" not in config or "task" not in config:
            raise ValueError(f"TF_CONFIG needs 'cluster' and 'task', got {sorted(config)}")
        return config
    hosts = [host for host in environ.get(WORKER_HOSTS_VARIABLE, "").split(",") if host]
    if hosts and environ.get(INDEX_VARIABLE, "") != "":
        index = int(environ[INDEX_VARIABLE])
        if not 0 <= index < len(hosts):
            raise ValueError(f"{INDEX_VARIABLE}={index} is outside the {len(hosts)} hosts of {WORKER_HOSTS_VARIABLE}")
        return worker_tf_config(hosts, index)
    return None


def worker_tf_config(hosts: list[str], index: int) -> dict[str, Any]:
    return {"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}}


def is_chief(tf_config: Mapping[str, Any] | None) -> bool:
    """The chief exports the model: the `chief` task, or worker 0 when the cluster has no chief."""
    if tf_config is None:
        return True
    task = tf_config["task"]
    if task["type"] == "chief":
        return True
    return task["type"] == "worker" and int(task["index"]) == 0 and "chief" not in tf_config["cluster"]


def task_label(tf_config: Mapping[str, Any] | None) -> str:
    if tf_config is None:
        return "single worker"
    return f"{tf_config['task']['type']} {tf_config['task']['index']}"


def cluster_size(tf_config: Mapping[str, Any] | None) -> int:
    if tf_config is None:
        return 1
    return sum(len(members) for kind, members in tf_config["cluster"].items() if kind in ("chief", "worker"))


def loopback_hosts(count: int) -> list[str]:
    """`count` free ports on 127.0.0.1, as host:port.

    The sockets are held until all ports are chosen so the same port is not picked twice; a port can
    still be taken between now and the worker binding it, which makes that worker fail to start and
    the task retry.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
