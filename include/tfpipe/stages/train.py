"""Train: a tuning trial (train split, scored on validation) or the final model (train + validation,
exported, scored on the held-out evaluation split), on one or more workers.

Where the cluster comes from decides what this process does:
- local (no TF_CONFIG): this process is the launcher. It starts `workers` training processes on
  loopback, each with its own TF_CONFIG, streams their logs with the worker's name, watches their
  memory against `training.memory_limit_mib`, and stops all of them when one fails, so a collective
  never waits forever for a dead peer. It imports no TensorFlow itself.
- Vertex AI or a Kubernetes Indexed Job (TF_CONFIG, or TFPIPE_WORKER_HOSTS + JOB_COMPLETION_INDEX):
  this process is one worker; the chief writes the output and the result.

A worker that dies fails the attempt with exit code 1, so Airflow retries; the retry finds the
checkpoints and resumes after the last finished epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tfpipe import artifacts
from tfpipe.config import Hyperparameters, TrainingConfig
from tfpipe.data.split import split_files
from tfpipe.errors import StageError, TfpipeError, TransientError
from tfpipe.stages import ERROR_PREFIX, RESULT_PREFIX
from tfpipe.stages.transform import load_transform
from tfpipe.training import cluster

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
WORKERS_FILE = "workers.json"
# What each mode learns from and is scored on.
MODES = {"trial": (("train",), "validation"), "final": (("train", "validation"), "eval")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits-uri", required=True, help="splits folder written by the split stage")
    parser.add_argument("--transform-uri", required=True, help="transform.json written by the transform stage")
    parser.add_argument("--output-uri", required=True, help="this model's (or trial's) folder")
    parser.add_argument("--config", required=True, help="the pipeline's training config as JSON")
    parser.add_argument("--mode", choices=sorted(MODES), default="final")
    parser.add_argument(
        "--hyperparameters", default="{}", help="JSON: hyperparameters over the config's, e.g. a trial's or the best's"
    )
    parser.add_argument("--workers", type=int, help="training workers; default: training.workers (trials: 1)")
    parser.add_argument("--checkpoint-uri", help="BackupAndRestore folder; kept across retries of the same run")
    parser.add_argument("--tensorboard-uri", help="TensorBoard log folder of this run")
    # Set by the local launcher for the processes it starts: write here, not to a staged --output-uri.
    parser.add_argument("--worker-output-dir", help=argparse.SUPPRESS)


def _hyperparameters(args: argparse.Namespace, config: TrainingConfig) -> Hyperparameters:
    try:
        override = json.loads(args.hyperparameters)
        if not isinstance(override, dict):
            raise StageError(f"--hyperparameters must be a JSON object, got {args.hyperparameters!r}")
        return Hyperparameters.model_validate({**config.hyperparameters.model_dump(), **override})
    except ValueError as exc:
        raise StageError(f"--hyperparameters: {exc}") from None


def _workers(args: argparse.Namespace, config: TrainingConfig) -> int:
    workers = args.workers if args.workers is not None else (1 if args.mode == "trial" else config.workers)
    if workers < 1:
        raise StageError(f"--workers must be at least 1, got {workers}")
    if workers > config.split.shards:
        raise StageError(
            f"{workers} workers but training.split.shards is {config.split.shards}: each worker needs files of its own"
        )
    return workers


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = TrainingConfig.model_validate(json.loads(args.config))
    _hyperparameters(args, config)  # refuse a bad setting here, not in every worker
    tf_config = cluster.tf_config_from_environment()
    if args.worker_output_dir is not None:
        return _train_here(args, config, tf_config, Path(args.worker_output_dir))
    if tf_config is not None:
        # One replica of a Vertex AI job or Kubernetes Indexed Job: the chief stages the output.
        if not cluster.is_chief(tf_config):
            # The chief's result is the stage's result: this replica must not overwrite it.
            args.result_file = None
            return _train_here(args, config, tf_config, None)
        with artifacts.staged_output(args.output_uri) as staging:
            return _train_here(args, config, tf_config, staging)
    return WorkerLauncher(args, config, _workers(args, config)).run()


def _train_here(
    args: argparse.Namespace, config: TrainingConfig, tf_config: dict[str, Any] | None, output: Path | None
) -> dict[str, Any]:
    from tfpipe.training import trainer

    learned_from, scored_on = MODES[args.mode]
    train_files, train_rows = split_files(args.splits_uri, learned_from)
    score_files, _ = split_files(args.splits_uri, (scored_on,))
    transform = load_transform(args.transform_uri)
    hp = _hyperparameters(args, config)
    job = trainer.TrainingJob(
        train_files=train_files,
        train_rows=train_rows,
        score_files=score_files,
        score_name=scored_on,
        transform=transform,
        hyperparameters=hp,
        seed=config.seed,
        checkpoint_dir=args.checkpoint_uri,
        tensorboard_dir=args.tensorboard_uri,
        export=args.mode == "final",
        export_dir=str(output) if output is not None else None,
    )
    result = trainer.train(job, tf_config)
    if output is not None and cluster.is_chief(tf_config):
        metrics = {
            **result,
            "mode": args.mode,
            "hyperparameters": hp.model_dump(),
            "learned_from": list(learned_from),
            "train_rows": train_rows,
            "transform_fingerprint": transform.get("fingerprint"),
        }
        artifacts.write_json(str(output / METRICS_FILE), metrics)
        result = {**metrics, "model_uri": artifacts.join(args.output_uri, trainer.SAVED_MODEL_DIR)}
        if args.mode == "trial":
            result.pop("model_uri")
    return result


class WorkerLauncher:
    """Start the training workers on loopback and see them through, or stop them all."""

    POLL_SECONDS = 0.25
    GRACE_SECONDS = 5.0

    def __init__(self, args: argparse.Namespace, config: TrainingConfig, workers: int) -> None:
        self.args = args
        self.config = config
        self.workers = workers
        self.processes: list[subprocess.Popen[str]] = []
        self.peak_rss_mib = [0.0] * workers
        self._outputs: list[list[str]] = [[] for _ in range(workers)]
        self._readers: list[threading.Thread] = []

    def _argv(self, output: Path) -> list[str]:
        args = self.args
        argv = [sys.executable, "-m", "tfpipe", "train"]
        for name in ("splits_uri", "transform_uri", "output_uri", "config", "mode", "hyperparameters"):
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        for name in ("checkpoint_uri", "tensorboard_uri"):
            if getattr(args, name):
                argv += [f"--{name.replace('_', '-')}", getattr(args, name)]
        return [*argv, "--worker-output-dir", str(output)]

    def run(self) -> dict[str, Any]:
        hosts = cluster.loopback_hosts(self.workers) if self.workers > 1 else []
        log.info(
            "starting %d training worker(s)%s", self.workers, f" on {', '.join(hosts)}" if hosts else " (no cluster)"
        )
        with artifacts.staged_output(self.args.output_uri) as staging:
            for index in range(self.workers):
                env = dict(os.environ)
                env.pop("TF_CONFIG", None)
                if hosts:
                    env["TF_CONFIG"] = json.dumps(cluster.worker_tf_config(hosts, index))
                process = subprocess.Popen(
                    self._argv(staging),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                self.processes.append(process)
                log.info("worker %d started (pid %d)", index, process.pid)
                for stream, sink in ((process.stderr, None), (process.stdout, self._outputs[index])):
                    reader = threading.Thread(target=self._relay, args=(index, stream, sink), daemon=True)
                    reader.start()
                    self._readers.append(reader)
            try:
                self._watch()
            except BaseException:
                self._stop_all()
                raise
            for reader in self._readers:
                reader.join()
            results = [self._result(index) for index in range(self.workers)]
            workers = [{**r, "peak_rss_mib": round(p, 1)} for r, p in zip(results, self.peak_rss_mib, strict=True)]
            for worker in workers:
                worker.pop("usage", None)
            artifacts.write_json(str(staging / WORKERS_FILE), workers)
        chief = next(r for r in results if r.get("chief"))
        summary = {key: value for key, value in chief.items() if key not in ("files", "usage", "chief", "task")}
        return {
            **summary,
            "workers": [
                {key: w[key] for key in ("task", "steps", "examples_this_worker", "files", "peak_rss_mib")}
                for w in workers
            ],
            "peak_rss_mib_per_worker": max(self.peak_rss_mib),
        }

    def _relay(self, index: int, stream: Any, sink: list[str] | None) -> None:
        # stderr: the worker's log, forwarded with its name; stdout: its one result line, kept.
        for line in stream:
            line = line.rstrip("\n")
            if sink is not None:
                sink.append(line)
            elif line:
                sys.stderr.write(f"[worker {index}] {line}\n")
                sys.stderr.flush()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.config.worker_timeout_seconds
        while True:
            codes = [process.poll() for process in self.processes]
            failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # A worker that loses its peer fails its next collective within moments; when several
                # are down by now, the one killed by a signal is the cause, the others the effect.
                index, code = min(failed, key=lambda item: (item[1] >= 0, item[0]))
                self._stop_all()
                raise self._failure(index, code, [other for other, _ in failed if other != index])
            if all(code == 0 for code in codes):
                return
            self._check_memory()
            if time.monotonic() > deadline:
                self._stop_all()
                raise TransientError(
                    f"training did not finish within training.worker_timeout_seconds "
                    f"({self.config.worker_timeout_seconds} s); all workers were stopped"
                )
            time.sleep(self.POLL_SECONDS)

    def _failure(self, index: int, code: int, also_failed: list[int]) -> TfpipeError:
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        error = next(
            (json.loads(line[len(ERROR_PREFIX) :]) for line in self._outputs[index] if line.startswith(ERROR_PREFIX)),
            None,
        )
        reason = f": {error['message']}" if error else ""
        checkpoint = self.args.checkpoint_uri
        resume = f"; a retry resumes from the last checkpoint in {checkpoint}" if checkpoint else ""
        others = f"; worker(s) {', '.join(map(str, also_failed))} failed after it" if also_failed else ""
        message = f"training worker {index} {how}{reason}{others}; the other workers were stopped{resume}"
        if error is not None and code == 2:
            return StageError(message)  # the worker refused its input: a retry cannot help
        return TransientError(message)

    def _check_memory(self) -> None:
        for index, process in enumerate(self.processes):
            rss = _resident_mib(process.pid)
            self.peak_rss_mib[index] = max(self.peak_rss_mib[index], rss)
            limit = self.config.memory_limit_mib
            if limit is not None and rss > limit:
                self._stop_all()
                raise StageError(
                    f"training worker {index} used {rss:.0f} MiB of memory, over training.memory_limit_mib "
                    f"({limit} MiB); all workers were stopped. Lower hyperparameters.batch_size or raise the limit."
                )

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + self.GRACE_SECONDS
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _result(self, index: int) -> dict[str, Any]:
        line = next((line for line in self._outputs[index] if line.startswith(RESULT_PREFIX)), None)
        if line is None:
            raise TransientError(f"training worker {index} exited without a result")
        return json.loads(line[len(RESULT_PREFIX) :])


def _resident_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
