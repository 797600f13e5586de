"""The monitoring DAG end to end: `airflow dags test chicago_taxi_monitoring` over windows of real traffic.

A real model server (its own process) answers replayed held-out trips: one window of clean trips, then one
whose fares shifted. The DAG's run over the clean window (the server up) sends nothing; then the server is
stopped, and the run over the shifted window sends a webhook naming the fare drift and the outage, and emits
the retraining asset event with its reasons.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ML_PYTHON, PROJECT_ROOT, write_sample_rows
from tests.integration.airflow_stack import free_port

WINDOW = 6.0
TRAIN = """
import os, sys
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
from tfpipe.training import model as m
design = m.Design(hidden=(8,), dropout=0.0)
m.keras.utils.set_random_seed(0)
columns = m.feature_columns(design)
transform = m.analyze(m.make_dataset(sys.argv[1], 256, columns=columns), design)
model = m.build_model(transform, design)
model.fit(m.make_dataset(sys.argv[1], 64, shuffle=True, seed=0, columns=columns), epochs=2, verbose=0)
print(m.export_serving_model(model, sys.argv[2]))
"""


class _Receiver(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _iso(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring-dag")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    train = write_sample_rows(tmp / "train.csv", 3000)
    evaluation = write_sample_rows(tmp / "eval.csv", 1000, start=3000)
    clean = write_sample_rows(tmp / "clean.csv", 3000, start=5000)
    shifted = tmp / "shifted.csv"
    with open(clean, newline="") as f, open(shifted, "w", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        for row in reader:
            row["fare"] = f"{float(row['fare']) * 3 + 15:.2f}" if row["fare"] else ""
            writer.writerow(row)
    model_uri = (
        subprocess.run(
            [str(ML_PYTHON), "-c", TRAIN, str(train), str(tmp / "model")],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    port = free_port()
    log_dir = tmp / "requests"
    server = subprocess.Popen(
        [
            str(ML_PYTHON),
            "-m",
            "tfpipe",
            "serve",
            "--config",
            str(PROJECT_ROOT / "dags/configs/chicago_taxi.yaml"),
            "--model-uri",
            model_uri,
            "--version",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "TFPIPE_REQUEST_LOG_DIR": str(log_dir), "TFPIPE_SERVING_ADMIN_TOKEN": "integration-token"},
    )
    try:
        for line in server.stdout:
            if "ready at" in line:
                break
        else:
            raise RuntimeError("the model server did not start")
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        start = time.time() + 1.0
        windows = []
        for index, trips in enumerate((clean, shifted)):
            begin = start + index * WINDOW
            time.sleep(max(0.0, begin - time.time()))
            subprocess.run(
                [
                    str(ML_PYTHON),
                    "-m",
                    "tfpipe.serving.loadgen",
                    "--url",
                    url,
                    "--csv",
                    str(trips),
                    "--rate",
                    "120",
                    "--duration",
                    str(WINDOW - 1.2),
                ],
                check=True,
                capture_output=True,
                env=env,
            )
            windows.append((begin, begin + WINDOW))
        time.sleep(max(0.0, windows[-1][1] + 1.0 - time.time()))
        return _run_dags(tmp, env, port, log_dir, train, evaluation, model_uri, windows, server)
    finally:
        server.terminate()
        server.wait(30)


def _run_dags(tmp, env, port, log_dir, train, evaluation, model_uri, windows, server):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    home = tmp / "airflow"
    airflow_env = {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "TFPIPE_ML_PYTHON": str(ML_PYTHON),
        "TFPIPE_PROJECT_ROOT": str(PROJECT_ROOT),
        "TFPIPE_REQUEST_LOG_DIR": str(log_dir),
        "TFPIPE_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "TFPIPE_LANDING_ROOT": str(tmp / "landing"),
        "TFPIPE_MONITORING_STATE": str(tmp / "state"),
        "MLFLOW_TRACKING_URI": str(tmp / "no-registry" / "mlflow.db"),
        "TFPIPE_QUOTA_METRICS": str(tmp / "no-quota.prom"),
        "TFPIPE_ALERT_WEBHOOK_CONN_ID": "tfpipe_test_webhook",
        "AIRFLOW_CONN_TFPIPE_TEST_WEBHOOK": json.dumps(
            {"conn_type": "http", "host": f"http://127.0.0.1:{receiver.server_address[1]}/alerts"}
        ),
        "AIRFLOW_CONN_TFPIPE_MODEL_SERVER": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port}),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, env=airflow_env, check=True)
    baselines = {"*": {"training_data_uri": str(train), "eval_uri": str(evaluation), "model_uri": model_uri}}
    runs = []
    for index, (begin, end) in enumerate(windows):
        if index == 1:
            server.terminate()  # the outage: the second run's probe finds nobody
            server.wait(30)
        _Receiver.bodies = []
        conf = {"window_start": _iso(begin), "window_end": _iso(end), "baselines": baselines}
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", "chicago_taxi_monitoring", "-c", json.dumps(conf)],
            capture_output=True,
            text=True,
            env=airflow_env,
            timeout=600,
        )
        runs.append((done, list(_Receiver.bodies)))
    receiver.shutdown()
    return runs, home / "airflow.db"


def test_a_clean_window_sends_nothing(scenario):
    (done, bodies), _ = scenario[0][0], None
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert bodies == []


def test_a_fare_shift_with_the_server_down_alerts_both_and_asks_for_retraining(scenario):
    runs, database = scenario
    done, bodies = runs[1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(bodies) == 1
    alerts = {(a["kind"], a["feature"]): a for a in bodies[0]["alerts"]}
    assert ("drift", "fare") in alerts and ("server_unreachable", None) in alerts
    assert alerts[("drift", "fare")]["runbook_url"].endswith("#drift-against-the-previous-window")
    assert "did not answer" in alerts[("server_unreachable", None)]["sentence"]
    with sqlite3.connect(database) as db:
        events = db.execute(
            "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.uri = ?",
            ("tfpipe://chicago_taxi/retraining",),
        ).fetchall()
    assert len(events) == 1
    assert any("fare" in reason for reason in json.loads(events[0][0])["reasons"])
