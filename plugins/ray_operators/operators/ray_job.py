"""Run one Ray job per Airflow task, exactly once per unit of work.

The job's submission id is deterministic: it is built from the DAG, run, task,
map index and try number. So on an Airflow retry the operator can look at the
previous try's job on the cluster and

- re-attach to it while it is still pending or running (a worker died, the job did not),
- reuse its result if it succeeded (the task died after the job finished),
- submit a new job only if it failed or was stopped.

A retry therefore never runs the same work twice at the same time. While the job
runs, its driver log is streamed into the task log; killing the task stops the job.

The job reports its outcome in a small JSON *result document* in object storage.
Each job gets its own: ``<result_prefix>/<submission id>.json``, passed to the job in
the ``JOB_RESULT_URI`` environment variable (and its id in ``JOB_SUBMISSION_ID``).
The operator reads it only once the job has ended, and only if it names that same
submission id, so a result another job left behind can never decide the task.
``result_to_xcom`` picks what goes to XCom (by default its ``outputs`` and
``metrics``): URIs and numbers, never the data. A failed job whose result says
``"retryable": false`` fails the task at once instead of burning its retries.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ray_operators.hooks.ray_job import RayJobHook

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_ACTIVE = {"PENDING", "RUNNING"}
_LOG_TAIL_LINES = 30


def submission_id_for(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """``airflow-<readable part>-<hash>-try<N>``: stable per task instance, unique per try."""
    key = f"{dag_id}\0{run_id}\0{task_id}\0{map_index}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    readable = _UNSAFE.sub("_", f"{dag_id}-{task_id}-{map_index}")[:60]
    return f"airflow-{readable}-{digest}-try{try_number}"


class RayJobOperator(BaseOperator):
    """Submit ``entrypoint`` as a Ray job, wait for it, and return its result document.

    :param entrypoint: shell command the job runs (templated).
    :param result_prefix: ``s3://`` or ``file://`` folder of the JSON results the jobs
        write, one per submission id (templated). None: the job writes no result.
    :param runtime_env: Ray runtime environment, e.g. ``working_dir`` (templated).
    :param ray_conn_id: connection to the cluster's Job API.
    :param aws_conn_id: connection used to read an ``s3://`` result.
    :param entrypoint_num_cpus: CPUs reserved for the job driver. 0 by default: the
        driver only coordinates, and a driver holding a CPU beside an actor pool can
        deadlock a small cluster.
    :param poll_interval: seconds between status polls.
    :param job_timeout: seconds after which the job is stopped and the task fails.
    """

    template_fields: Sequence[str] = ("entrypoint", "result_prefix", "runtime_env")
    template_fields_renderers = {"runtime_env": "json"}
    ui_color = "#d6ecfa"

    def __init__(
        self,
        *,
        entrypoint: str,
        result_prefix: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        ray_conn_id: str = RayJobHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        entrypoint_num_cpus: float = 0,
        poll_interval: float = 1.0,
        job_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.result_prefix = result_prefix
        self.runtime_env = runtime_env
        self.ray_conn_id = ray_conn_id
        self.aws_conn_id = aws_conn_id
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.submission_id: str | None = None

    @cached_property
    def hook(self) -> RayJobHook:
        return RayJobHook(ray_conn_id=self.ray_conn_id)

    def execute(self, context: Any) -> Any:
        self.submission_id = self._attach_or_submit(context)
        status = self._wait(self.submission_id)
        # Only now, with the job ended, is its result final.
        result = self._read_result(self.submission_id)
        if status != "SUCCEEDED":
            self._fail(self.submission_id, status, result)
        self.log.info("Ray job %s succeeded", self.submission_id)
        if self.result_prefix and result is None:
            # Downstream tasks would fail on a missing input, far from the cause.
            raise AirflowException(
                f"Ray job {self.submission_id} succeeded but wrote no result at "
                f"{self.result_uri(self.submission_id)}"
            )
        return self.result_to_xcom(result) if result is not None else None

    def result_uri(self, submission_id: str) -> str | None:
        if not self.result_prefix:
            return None
        return f"{self.result_prefix.rstrip('/')}/{submission_id}.json"

    def result_to_xcom(self, result: dict[str, Any]) -> dict[str, Any]:
        """What of the result document goes to XCom: its outputs and metrics."""
        return {"outputs": result.get("outputs", {}), "metrics": result.get("metrics", {})}

    def on_kill(self) -> None:
        if self.submission_id:
            self.log.info("Task killed: stopping Ray job %s", self.submission_id)
            self.hook.stop(self.submission_id)

    # --- submission -------------------------------------------------------

    def _attach_or_submit(self, context: Any) -> str:
        ti = context["ti"]
        ids = [
            submission_id_for(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, n)
            for n in range(1, ti.try_number + 1)
        ]
        # The newest job of any attempt decides (a try that died before submitting
        # left none): one still active is re-attached, one that succeeded is reused.
        # A try only submits once every earlier job has ended, so older ones need no look.
        for candidate in reversed(ids):
            job = self.hook.find(candidate)
            if job is None:
                continue
            status = str(job.status)
            if status in _ACTIVE:
                self.log.info("Re-attaching to Ray job %s (%s) of an earlier attempt", candidate, status)
                return candidate
            if status == "SUCCEEDED":
                self.log.info("Reusing the result of Ray job %s, which already succeeded", candidate)
                return candidate
            if candidate == ids[-1]:
                raise AirflowException(f"Ray job {candidate} of this try already ended as {status}")
            self.log.info("Ray job %s of an earlier try ended as %s: submitting anew", candidate, status)
            break
        submission_id = ids[-1]
        runtime_env = copy.deepcopy(self.runtime_env or {})
        env_vars = runtime_env.setdefault("env_vars", {})
        env_vars["JOB_SUBMISSION_ID"] = submission_id
        if self.result_prefix:
            env_vars["JOB_RESULT_URI"] = self.result_uri(submission_id)
        try:
            self.hook.submit(
                entrypoint=self.entrypoint,
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id,
                          "map_index": str(ti.map_index), "try_number": str(ti.try_number)},
                entrypoint_num_cpus=self.entrypoint_num_cpus,
            )
        except Exception:
            # A submission whose answer was lost (a timeout, a restarted worker) may
            # have gone through: the id is taken by then, and the job is ours to attach to.
            if self.hook.find(submission_id) is None:
                raise
            self.log.info("Ray job %s was already submitted: attaching to it", submission_id)
            return submission_id
        self.log.info("Submitted Ray job %s to %s: %s", submission_id, self.hook.address, self.entrypoint)
        return submission_id

    def _wait(self, submission_id: str) -> str:
        started = time.monotonic()
        printed = 0
        while True:
            job = self.hook.find(submission_id)
            if job is None:
                raise AirflowException(f"Ray job {submission_id} vanished from the cluster")
            status = str(job.status)
            printed = self._stream_logs(submission_id, printed, final=status not in _ACTIVE)
            if status not in _ACTIVE:
                return status
            if self.job_timeout and time.monotonic() - started > self.job_timeout:
                self.hook.stop(submission_id)
                raise AirflowException(f"Ray job {submission_id} ran over {self.job_timeout}s and was stopped")
            time.sleep(self.poll_interval)

    def _stream_logs(self, submission_id: str, printed: int, final: bool = False) -> int:
        """Log the job's new lines; a line still being written waits for the next poll."""
        logs = self.hook.logs(submission_id)
        end = len(logs) if final else logs.rfind("\n", printed) + 1
        for line in logs[printed:end].splitlines():
            self.log.info("[ray] %s", line)
        return max(printed, end)

    # --- outcome ------------------------------------------------------------

    def _read_result(self, submission_id: str) -> dict[str, Any] | None:
        """The job's result document, or None if it wrote none."""
        uri = self.result_uri(submission_id)
        if uri is None:
            return None
        text = self._read_text(uri)
        if text is None:
            self.log.warning("No result document at %s", uri)
            return None
        result = json.loads(text)
        if result.get("submission_id") != submission_id:
            raise AirflowException(
                f"the result at {uri} names job {result.get('submission_id')!r}, not {submission_id!r}"
            )
        return result

    def _read_text(self, uri: str) -> str | None:
        """``s3://bucket/key`` (the raw key, '#' and '?' included) or ``file://`` (percent-encoded)."""
        scheme, _, rest = uri.partition("://")
        if scheme == "s3":
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from botocore.exceptions import ClientError

            bucket, _, key = rest.partition("/")
            try:
                return S3Hook(aws_conn_id=self.aws_conn_id).read_key(key, bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
        if scheme == "file":
            path = unquote(rest[rest.index("/"):])  # after the (empty or localhost) host
            try:
                with open(path, encoding="utf-8") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None
        raise AirflowException(f"unsupported result URI {uri!r}")

    def _fail(self, submission_id: str, status: str, result: dict[str, Any] | None) -> None:
        tail = "\n".join(self.hook.logs(submission_id).splitlines()[-_LOG_TAIL_LINES:])
        job = self.hook.find(submission_id)
        reason = (result or {}).get("error") or (job.message if job else status)
        message = f"Ray job {submission_id} {status}: {reason}"
        self.log.error("%s\nLast lines of the job log:\n%s", message, tail)
        if result is not None and result.get("retryable") is False:
            raise AirflowFailException(message)
        raise AirflowException(message)
