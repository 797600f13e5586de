"""Train one big_tipper model in this process: a single worker, or one worker of a multi-worker cluster.

With a cluster (TF_CONFIG), `MultiWorkerMirroredStrategy` keeps a replica of the model on every
worker and all-reduces the gradients of each step; each worker reads its own training files (no
worker parses another's). Checkpoints go through `BackupAndRestore`: a worker that dies takes the
attempt down with it, and the retry restores the last finished epoch instead of starting over. The
chief exports the serving model, then scores it by reading the exported SavedModel back, so the
figure reported is the figure of the artifact that will be served.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tfpipe.config import Hyperparameters
from tfpipe.training import cluster
from tfpipe.training import model as m

tf = m.tf
keras = m.keras
log = logging.getLogger(__name__)
SAVED_MODEL_DIR = "saved_model"
SCORE_BATCH = 2048


def design_of(hyperparameters: Hyperparameters) -> m.Design:
    return m.Design(
        hidden=tuple(hyperparameters.hidden),
        dropout=hyperparameters.dropout,
        wide=hyperparameters.wide,
        learning_rate=hyperparameters.learning_rate,
        l2=hyperparameters.l2,
    )


@dataclass(frozen=True)
class TrainingJob:
    train_files: Sequence[str]
    train_rows: int
    score_files: Sequence[str]  # held-out data the finished model is scored on
    score_name: str  # "validation" or "eval"
    transform: Mapping[str, Any]
    hyperparameters: Hyperparameters
    seed: int
    checkpoint_dir: str | None
    tensorboard_dir: str | None
    export: bool  # the final model is exported; a tuning trial is not
    export_dir: str | None  # where the chief exports (<export_dir>/saved_model); other workers use a temp folder


class _Progress(keras.callbacks.Callback):
    """Logs each epoch as it ends, says which epoch a resumed attempt starts from, keeps the history."""

    def __init__(self, epochs: int, who: str) -> None:
        super().__init__()
        self.epochs = epochs
        self.who = who
        self.first_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch > 0:
                log.info(
                    "%s: resumed from the checkpoint: epochs 1-%d were done by an earlier attempt, continuing at %d",
                    self.who,
                    epoch,
                    epoch + 1,
                )
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        seconds = time.perf_counter() - self._started
        loss = float((logs or {}).get("loss", math.nan))
        self.history.append({"epoch": epoch + 1, "loss": round(loss, 6), "seconds": round(seconds, 3)})
        log.info("%s: epoch %d/%d loss %.4f (%.1f s)", self.who, epoch + 1, self.epochs, loss, seconds)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at epoch {epoch + 1}: lower the learning rate")


def _strategy(tf_config: Mapping[str, Any] | None) -> Any:
    if tf_config is None or cluster.cluster_size(tf_config) == 1:
        return tf.distribute.get_strategy()
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    return tf.distribute.MultiWorkerMirroredStrategy()


def train(job: TrainingJob, tf_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train, export (chief) and score (chief); every worker returns what it did."""
    who = cluster.task_label(tf_config)
    chief = cluster.is_chief(tf_config)
    strategy = _strategy(tf_config)
    replicas = strategy.num_replicas_in_sync
    hp = job.hyperparameters
    design = design_of(hp)
    columns = m.feature_columns(design)
    keras.utils.set_random_seed(job.seed)  # the same initial weights on every worker
    files = sorted(job.train_files)
    if len(files) < replicas:
        raise ValueError(f"{len(files)} training file(s) for {replicas} workers: every worker needs a file of its own")
    steps_per_epoch = max(1, math.ceil(job.train_rows / hp.batch_size))
    my_files: list[str] = []

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Files dealt round-robin by input pipeline: each worker parses only its own.
        mine = files[context.input_pipeline_id :: context.num_input_pipelines]
        my_files[:] = mine
        dataset = m.make_dataset(
            mine,
            context.get_per_replica_batch_size(hp.batch_size),
            shuffle=True,
            seed=job.seed + context.input_pipeline_id,
            num_epochs=None,  # repeated: steps_per_epoch decides what an epoch is, the same on every worker
            columns=columns,
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.with_options(options)

    with strategy.scope():
        model = m.build_model(job.transform, design)
    progress = _Progress(hp.epochs, who)
    callbacks: list[Any] = []
    if job.checkpoint_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(job.checkpoint_dir))
    callbacks.append(progress)
    if job.tensorboard_dir:
        # Non-chief workers write to a temporary folder the callback removes at the end.
        callbacks.append(keras.callbacks.TensorBoard(job.tensorboard_dir, update_freq="epoch", profile_batch=0))
    log.info(
        "%s: training on %d replica(s), %d steps of %d examples per epoch, %d epochs",
        who,
        replicas,
        steps_per_epoch,
        hp.batch_size,
        hp.epochs,
    )
    started = time.perf_counter()
    model.fit(
        keras.utils.experimental.DatasetCreator(dataset_fn),
        epochs=hp.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - started
    epochs_run = len(progress.history)
    examples = epochs_run * steps_per_epoch * hp.batch_size
    result: dict[str, Any] = {
        "task": who,
        "chief": chief,
        "replicas": replicas,
        "files": ["/".join(path.split("/")[-2:]) for path in my_files],  # split/file
        "steps": epochs_run * steps_per_epoch,
        "examples_this_worker": epochs_run * steps_per_epoch * (hp.batch_size // replicas),
        "train_seconds": round(seconds, 3),
        "examples_per_second": round(examples / seconds, 1) if seconds else None,
        "resumed_from_epoch": progress.first_epoch if progress.first_epoch else None,
        "epochs": progress.history,
    }
    log.info(
        "%s: trained %d epoch(s) in %.1f s, %.0f examples/s", who, epochs_run, seconds, result["examples_per_second"]
    )

    scorer: Any = model
    if job.export:
        if chief and job.export_dir is None:
            raise ValueError("the chief needs an export folder")
        # Every worker saves (the save is collective); only the chief's copy is kept.
        target = job.export_dir if chief and job.export_dir else tempfile.mkdtemp(prefix="tfpipe-export-")
        path = m.export_serving_model(model, os.path.join(target, SAVED_MODEL_DIR))
        if not chief:
            shutil.rmtree(target, ignore_errors=True)
            return result
        scorer = tf.saved_model.load(path).signatures["serving_default"]
        log.info("%s: exported the serving model to %s", who, path)
    elif not chief:
        return result
    result.update(score(scorer, job.score_files, columns, job.score_name))
    return result


def score(scorer: Any, files: Sequence[str], columns: list[str], name: str) -> dict[str, Any]:
    """AUC and log loss of a model (Keras) or serving signature on labelled CSV files, streamed."""
    auc = keras.metrics.AUC(num_thresholds=10_000)
    loss = keras.metrics.BinaryCrossentropy()
    rows = 0
    for features, labels in m.make_dataset(list(files), SCORE_BATCH, columns=columns):
        if isinstance(scorer, keras.Model):
            probabilities = tf.reshape(scorer(features, training=False), [-1])
        else:
            probabilities = scorer(**features)["probabilities"]
        auc.update_state(labels, probabilities)
        loss.update_state(tf.reshape(tf.cast(labels, tf.float32), [-1, 1]), tf.reshape(probabilities, [-1, 1]))
        rows += int(labels.shape[0])
    figures = {f"{name}_auc": round(float(auc.result()), 6), f"{name}_log_loss": round(float(loss.result()), 6)}
    log.info("%s: AUC %.4f, log loss %.4f on %d rows", name, figures[f"{name}_auc"], figures[f"{name}_log_loss"], rows)
    return {**figures, f"{name}_rows": rows}
