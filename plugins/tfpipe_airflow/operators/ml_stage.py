"""RunMLStageOperator: one operator for every ML stage, wherever it runs.

The pipeline config's `execution.mode` picks where: a local subprocess of the ML runtime (the
embedded default), a Kubernetes pod of the ML image, or a Vertex AI custom job. The stage, its
arguments and its result (pushed as XCom) are the same in every mode, so what runs on a laptop is
what runs in production.

A stage with several workers (distributed training) runs as that many cooperating processes: started
by the stage itself on loopback (local), pods of an Indexed Job (Kubernetes), or replicas of a
two-pool custom job (Vertex AI). Only the chief (worker 0) writes the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperator, Context

from tfpipe.config import ExecutionConfig
from tfpipe_airflow.hooks.ml_stage import LocalMLStageHook, MLStageFailed, MLStageRejected, stage_argv
from tfpipe_airflow.links.artifacts import StageReportLink
from tfpipe_airflow.links.tensorboard import TensorBoardLink


class RunMLStageOperator(BaseOperator):
    """Run `python -m tfpipe <stage>` with templated arguments; return the stage's JSON result.

    :param stage: stage name (see `python -m tfpipe --help`).
    :param arguments: stage options, `{"output_uri": ...}` becomes `--output-uri ...`. Templated;
        values may be XComArgs of upstream stages.
    :param execution: where to run, from the pipeline config.
    :param result_uri: where the stage also writes its result (required for Vertex AI jobs, whose
        only way back is storage). Templated.
    :param extra_arguments: more stage options, merged over `arguments`. Templated. For mapped tasks:
        `.partial(arguments=...)` holds what every instance shares (XComArgs of upstream stages may only
        appear there) and `.expand(extra_arguments=[...])` what varies, such as a tuning trial's settings.
    :param tensorboard_url: TensorBoard serving the artifact root; with a `tensorboard_uri` argument the
        task gets a "TensorBoard" link to its logs.
    :param workers: how many workers the stage runs on (`training.workers` for the train stage); more
        than one only for stages that train with tf.distribute.MultiWorkerMirroredStrategy.
    """

    template_fields = ("arguments", "extra_arguments", "result_uri")
    template_fields_renderers = {"arguments": "json", "extra_arguments": "json"}
    ui_color = "#fde9c8"
    operator_extra_links = (StageReportLink(), TensorBoardLink())

    def __init__(
        self,
        *,
        stage: str,
        execution: ExecutionConfig,
        arguments: Mapping[str, Any] | None = None,
        result_uri: str | None = None,
        extra_arguments: Mapping[str, Any] | None = None,
        tensorboard_url: str | None = None,
        workers: int = 1,
        **kwargs: Any,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        # Each key of the result is its own XCom too, so `task.output["examples_uri"]` works downstream.
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.stage = stage
        self.execution = execution
        self.arguments = dict(arguments or {})
        self.result_uri = result_uri
        self.extra_arguments = dict(extra_arguments or {})
        self.tensorboard_url = tensorboard_url
        self.workers = workers
        self._local_hook: LocalMLStageHook | None = None
        self._remote: Any = None
        self._vertex_hook: Any = None
        self._vertex_job_name: str | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        argv = stage_argv({**self.arguments, **self.extra_arguments})
        mode = self.execution.mode
        if mode == "local":
            local = self.execution.local
            self._local_hook = LocalMLStageHook(python=local.python)
            if self.workers > 1:
                # Locally the stage starts its workers itself; remotely each replica is one worker.
                argv += ["--workers", str(self.workers)]
            if self.result_uri:
                argv += ["--result-file", self.result_uri]
            try:
                return self._local_hook.run(self.stage, argv)
            except (MLStageFailed, MLStageRejected) as failure:
                # What the stage left for a person (its report) stays reachable from the failed task.
                for key, value in failure.details.items():
                    context["ti"].xcom_push(key=key, value=value)
                raise
        if mode == "kubernetes":
            assert self.execution.kubernetes is not None
            if self.workers > 1:
                return self._run_training_job(argv, context)
            # Imported here: the Kubernetes provider is not needed to parse DAGs or run locally.
            from tfpipe_airflow.execution.kubernetes import build_pod_operator

            self._remote = build_pod_operator(
                task_id=self.task_id,
                stage=self.stage,
                argv=argv,
                config=self.execution.kubernetes,
                labels=self._labels(),
            )
            return self._remote.execute(context)
        if mode == "vertex_ai":
            from airflow.providers.google.cloud.hooks.vertex_ai.custom_job import CustomJobHook

            from tfpipe_airflow.execution.vertex_ai import build_custom_job, run_custom_job

            config = self.execution.vertex_ai
            assert config is not None
            if not self.result_uri or not self.result_uri.startswith("gs://"):
                raise ValueError(f"a Vertex AI stage needs a gs:// result_uri, got {self.result_uri!r}")
            job = build_custom_job(
                display_name=f"{self.dag_id}-{self.task_id}",
                stage=self.stage,
                argv=argv,
                result_uri=self.result_uri,
                config=config,
                labels=self._labels(),
                workers=self.workers,
            )
            hook = CustomJobHook(gcp_conn_id=config.gcp_conn_id, impersonation_chain=config.impersonation_chain)
            self._vertex_hook = hook
            return run_custom_job(
                hook=hook,
                job=job,
                config=config,
                result_uri=self.result_uri,
                log=self.log,
                on_created=self._remember_vertex_job,
            )
        raise ValueError(f"unknown execution mode {mode!r}")

    def _run_training_job(self, argv: list[str], context: Context) -> dict[str, Any]:
        """Run the stage's workers as a Kubernetes Indexed Job; return what the chief pod wrote.

        The result comes back as the chief's XCom, read by the job operator from the chief pod's
        sidecar (as for a single pod); `result_uri` is not used in this mode.
        """
        from tfpipe_airflow.execution.kubernetes import (
            build_training_job_operator,
            build_training_service,
            run_training_job,
            training_job_name,
        )

        config = self.execution.kubernetes
        assert config is not None
        ti = context["ti"]
        job_name = training_job_name(
            dag_id=self.dag_id,
            task_id=self.task_id,
            run_id=context["run_id"],
            map_index=ti.map_index,
            try_number=ti.try_number,
        )
        service = build_training_service(
            job_name=job_name, namespace=config.namespace, stage=self.stage, labels=self._labels()
        )
        self._remote = build_training_job_operator(
            task_id=self.task_id,
            job_name=job_name,
            stage=self.stage,
            argv=argv,
            workers=self.workers,
            config=config,
            labels=self._labels(),
        )
        return run_training_job(job_operator=self._remote, service=service, context=context, log=self.log)

    def _remember_vertex_job(self, name: str) -> None:
        self._vertex_job_name = name

    def _labels(self) -> dict[str, str]:
        return {"dag_id": self.dag_id, "task_id": self.task_id}

    def on_kill(self) -> None:
        if self._local_hook is not None:
            self._local_hook.kill()
        elif self._remote is not None:
            self._remote.on_kill()
        elif self._vertex_hook is not None and self._vertex_job_name and self.execution.vertex_ai is not None:
            from tfpipe_airflow.execution.vertex_ai import cancel_custom_job

            cancel_custom_job(self._vertex_hook, self._vertex_job_name, self.execution.vertex_ai.region)
