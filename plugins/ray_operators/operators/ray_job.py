"""Run one Ray job per Airflow task, exactly once per unit of work.

**Deferrable by default** (``[operators] default_deferrable``, or ``deferrable=``): ``execute``
submits the job (or re-attaches to one) and defers to ``RayJobTrigger``, so no worker slot is held
while the job runs; ``execute_complete`` reads the outcome. With ``wait_before_defer``, the worker
first runs the same trigger itself for that long: a job that ends by then ends its task in the same
slot, without the round trip through the triggerer and the scheduler that resuming costs (a short
stage job of a small drop). Not deferred, the worker waits with the same trigger's loop. Either way the job's log streams into the task's log as it is written, and
a failure's message ends with the log's last lines. The task's "Ray job" button opens the job's
page on the dashboard.

**The rerun rule.** A job's submission id is deterministic: ``<namespace>-<dag, task, map
index>-<hash of dag, run, task, map index>-try<N>``, the namespace from the connection (one per
deployment sharing a cluster). The tries Airflow makes on its own (retries) form one *run of the
task*; a user clearing the task starts a new one (Airflow counts its tries from
``max_tries - retries + 1``, as it does for reschedules). Within a run of the task, a try looks at
the newest earlier try's job and

- re-attaches to it while it is pending or running (a worker died, the job did not),
- reuses its result if it succeeded (the task died after the job finished),
- submits anew only if it failed or was stopped.

A cleared task always submits a new job: a job of its earlier run still running is stopped
first, so two jobs never do the same work at once. A kill (a user's, or a timeout) stops the job,
also when it lands while the job is being submitted.

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

import asyncio
import copy
import hashlib
import json
import re
import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ray_operators.hooks.ray_job import ACTIVE_STATES, RayJobHook
from ray_operators.links.ray_job import RayJobLink
from ray_operators.triggers.ray_job import RayJobTrigger

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# How long a kill that landed during a submission waits for the job to appear, to stop it.
_SUBMISSION_SETTLE_SECONDS = 15.0


def submission_id_for(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int,
                      namespace: str = "airflow") -> str:
    """``<namespace>-<readable part>-<hash>-try<N>``: stable per task instance, unique per try."""
    key = f"{namespace}\0{dag_id}\0{run_id}\0{task_id}\0{map_index}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    readable = _UNSAFE.sub("_", f"{dag_id}-{task_id}-{map_index}")[:60]
    return f"{_UNSAFE.sub('_', namespace)}-{readable}-{digest}-try{try_number}"


def first_try_of_this_run(ti: Any, retries: int) -> int:
    """The first try of the task's current run: 1, or the try after the user's last clear."""
    return min(max(1, ti.max_tries - retries + 1), ti.try_number)


async def _first_event(trigger: RayJobTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AirflowException(f"{trigger!r} ended without an event")


async def _first_event_within(trigger: RayJobTrigger, seconds: float) -> dict[str, Any] | None:
    """The trigger's event if the job ends within ``seconds``, else None (the trigger stopped)."""
    try:
        return await asyncio.wait_for(_first_event(trigger), timeout=seconds)
    except TimeoutError:
        return None


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
    :param entrypoint_resources: custom resources the job driver asks for, so it runs on the
        nodes that offer them (e.g. worker nodes, not the head).
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param wait_before_defer: seconds a deferrable task waits for its job in the worker before it
        defers (0: at once). The slot is held that long; a job that ends sooner saves the resume.
    :param poll_interval: seconds between status polls.
    :param stream_logs: stream the job's log into the task's log.
    :param job_timeout: seconds after which the job is stopped and the task fails (default: the
        task's ``execution_timeout``, which Airflow does not apply to a deferred task itself).
    """

    template_fields: Sequence[str] = ("entrypoint", "result_prefix", "runtime_env")
    template_fields_renderers = {"runtime_env": "json"}
    operator_extra_links = (RayJobLink(),)
    ui_color = "#d6ecfa"
    log_tail_lines = 30

    def __init__(
        self,
        *,
        entrypoint: str,
        result_prefix: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        ray_conn_id: str = RayJobHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        entrypoint_num_cpus: float = 0,
        entrypoint_resources: dict[str, float] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 5.0,
        wait_before_defer: float = 0.0,
        stream_logs: bool = True,
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
        self.entrypoint_resources = entrypoint_resources
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_before_defer = wait_before_defer
        self.stream_logs = stream_logs
        self.job_timeout = job_timeout
        self.submission_id: str | None = None
        self._submitting = False

    @cached_property
    def hook(self) -> RayJobHook:
        return RayJobHook(ray_conn_id=self.ray_conn_id)

    def prepare(self, context: Any) -> None:
        """Set what depends on the run (a subclass's entrypoint, result prefix) before ``execute`` and
        again before ``execute_complete``, which runs on a new instance after a deferral."""

    def execute(self, context: Any) -> Any:
        self.prepare(context)
        self.submission_id = self._attach_or_submit(context)
        RayJobLink.persist(context, self.hook.config.dashboard_url(self.submission_id))
        # Airflow 3 does not time a deferred task out (its execution_timeout covers execute only), and
        # a trigger's own timeout would leave the job running: the trigger stops the job at the deadline.
        timeout = self.job_timeout or (self.execution_timeout.total_seconds() if self.execution_timeout else None)
        trigger = RayJobTrigger(
            submission_id=self.submission_id, ray_conn_id=self.ray_conn_id, poll_interval=self.poll_interval,
            stream_logs=self.stream_logs, tail_lines=self.log_tail_lines,
            deadline=time.time() + timeout if timeout else None,
        )
        if not self.deferrable:
            return self._complete(asyncio.run(_first_event(trigger)), context)
        if self.wait_before_defer > 0:
            event = asyncio.run(_first_event_within(trigger, self.wait_before_defer))
            if event is not None:
                return self._complete(event, context)
            self.log.info("Ray job %s still runs after %.0fs: deferring", self.submission_id, self.wait_before_defer)
            trigger.skip_lines = trigger.lines_streamed  # the triggerer goes on from there in the task's log
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """The job has ended (the trigger's event), after a deferral: a new instance, nothing of execute
        is left."""
        self.prepare(context)
        return self._complete(event, context)

    def _complete(self, event: dict[str, Any], context: Any) -> Any:
        """The job has ended: its result, or the task fails with its cause."""
        self.submission_id = submission_id = event["submission_id"]
        status = event["status"]
        # Only now, with the job ended, is its result final.
        result = self._read_result(submission_id)
        if status != "SUCCEEDED":
            self._fail(event, result)
        self.log.info("Ray job %s succeeded", submission_id)
        if self.result_prefix and result is None:
            # Downstream tasks would fail on a missing input, far from the cause.
            raise AirflowException(
                f"Ray job {submission_id} succeeded but wrote no result at {self.result_uri(submission_id)}"
            )
        return self.result_to_xcom(result, context) if result is not None else None

    def result_uri(self, submission_id: str) -> str | None:
        if not self.result_prefix:
            return None
        return f"{self.result_prefix.rstrip('/')}/{submission_id}.json"

    def result_to_xcom(self, result: dict[str, Any], context: Any) -> dict[str, Any]:
        """What of the result document goes to XCom: its outputs and metrics."""
        return {"outputs": result.get("outputs", {}), "metrics": result.get("metrics", {})}

    def on_kill(self) -> None:
        """Stop the job; a kill that landed mid-submission waits for the job to appear."""
        if not self.submission_id:
            return
        self.log.info("Task killed: stopping Ray job %s", self.submission_id)
        settle_by = time.monotonic() + (_SUBMISSION_SETTLE_SECONDS if self._submitting else 0)
        while not self.hook.stop(self.submission_id) and time.monotonic() < settle_by:
            if (job := self.hook.find(self.submission_id)) is not None and job["status"] not in ACTIVE_STATES:
                return
            time.sleep(0.5)

    # --- submission -------------------------------------------------------

    def _submission_id(self, ti: Any, try_number: int) -> str:
        return submission_id_for(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, try_number,
                                 namespace=self.hook.config.namespace)

    def _attach_or_submit(self, context: Any) -> str:
        ti = context["ti"]
        first = first_try_of_this_run(ti, self.retries or 0)
        ids = [self._submission_id(ti, n) for n in range(first, ti.try_number + 1)]
        # The newest job of this run's tries decides (a try that died before submitting left none):
        # one still active is re-attached, one that succeeded is reused. A try only submits once
        # every earlier job has ended, so older ones need no look.
        for candidate in reversed(ids):
            job = self.hook.find(candidate)
            if job is None:
                continue
            status = job["status"]
            if status in ACTIVE_STATES:
                self.log.info("Re-attaching to Ray job %s (%s) of an earlier attempt", candidate, status)
                return candidate
            if status == "SUCCEEDED":
                self.log.info("Reusing the result of Ray job %s, which already succeeded", candidate)
                return candidate
            if candidate == ids[-1]:
                raise AirflowException(f"Ray job {candidate} of this try already ended as {status}")
            self.log.info("Ray job %s of an earlier try ended as %s: submitting anew", candidate, status)
            break
        else:
            if first > 1:
                self._stop_the_cleared_run(self._submission_id(ti, first - 1))
        return self._submit(ti, ids[-1])

    def _stop_the_cleared_run(self, submission_id: str) -> None:
        """A user cleared the task: its earlier run's job, if it still runs, ends before a new one starts."""
        job = self.hook.find(submission_id)
        if job is None or job["status"] not in ACTIVE_STATES:
            return
        self.log.info("The task was cleared: stopping Ray job %s of its earlier run", submission_id)
        self.hook.stop(submission_id)
        while (job := self.hook.find(submission_id)) is not None and job["status"] in ACTIVE_STATES:
            time.sleep(1.0)

    def _submit(self, ti: Any, submission_id: str) -> str:
        runtime_env = copy.deepcopy(self.runtime_env or {})
        env_vars = runtime_env.setdefault("env_vars", {})
        env_vars["JOB_SUBMISSION_ID"] = submission_id
        if self.result_prefix:
            env_vars["JOB_RESULT_URI"] = self.result_uri(submission_id)
        # From here a kill must stop this job, even one whose submission is still on the wire.
        self.submission_id, self._submitting = submission_id, True
        try:
            self.hook.submit(
                entrypoint=self.entrypoint,
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id,
                          "map_index": str(ti.map_index), "try_number": str(ti.try_number)},
                entrypoint_num_cpus=self.entrypoint_num_cpus,
                entrypoint_resources=self.entrypoint_resources,
            )
        except Exception:
            # A submission whose answer was lost (a timeout, a restarted worker) may
            # have gone through: the id is taken by then, and the job is ours to attach to.
            if self.hook.find(submission_id) is None:
                raise
            self.log.info("Ray job %s was already submitted: attaching to it", submission_id)
            return submission_id
        finally:
            self._submitting = False
        self.log.info("Submitted Ray job %s to %s: %s", submission_id, self.hook.address, self.entrypoint)
        return submission_id

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

    def _fail(self, event: dict[str, Any], result: dict[str, Any] | None) -> None:
        submission_id, status = event["submission_id"], event["status"]
        reason = (result or {}).get("error") or event.get("message") or status
        tail = "\n".join(event.get("log_tail") or [])
        message = f"Ray job {submission_id} {status}: {reason}"
        if tail:
            message += f"\nLast lines of the job's log:\n{tail}"
        self.log.error("%s", message)
        if result is not None and result.get("retryable") is False:
            raise AirflowFailException(message)
        raise AirflowException(message)
