"""What the project's DAGs share: their tasks' retry policy, their Ray tasks' options, the sensor
that waits for work, and what starts an ingest run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

TASK_DEFAULTS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    # A task past this is killed, and its Ray job stopped with it (on_kill).
    "execution_timeout": timedelta(hours=2),
}


def ray_job_options() -> dict[str, Any]:
    """What every Ray task of the project's DAGs is given: it defers while its job runs, and its job's
    driver (which assembles each document's outputs) runs where the heavy work does, never on the
    head, when worker nodes offer ``PIPELINE_RAY_WORKER_RESOURCE``."""
    from include.control.settings import get_control_settings
    from include.worker_options import UNITS_PER_WORKER

    settings = get_control_settings()
    resources = {settings.ray_worker_resource: UNITS_PER_WORKER} if settings.ray_worker_resource else None
    return {"deferrable": True, "poll_interval": settings.ray_poll_seconds,
            "wait_before_defer": settings.ray_wait_before_defer_seconds, "entrypoint_resources": resources}


def ingest_schedule() -> Any:
    """``document_ingest``'s schedule: the sweep's cron (``PIPELINE_INGEST_SCHEDULE``) and, with
    ``PIPELINE_INGEST_EVENTS``, the events of the inbox asset: its watcher lists the inbox, or reads the
    queue its bucket notifies."""
    from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

    from include.control.inbox_events import InboxWorkTrigger, S3EventQueueTrigger
    from include.control.settings import get_control_settings

    settings = get_control_settings()
    sweep = CronTriggerTimetable(settings.ingest_schedule, timezone="UTC") if settings.ingest_schedule else None
    if settings.ingest_events == "off":
        return sweep
    if settings.ingest_events == "sqs":
        if not settings.ingest_queue_url:
            raise ValueError("PIPELINE_INGEST_EVENTS=sqs needs PIPELINE_INGEST_QUEUE_URL: the queue the inbox notifies")
        watcher = S3EventQueueTrigger(queue_url=settings.ingest_queue_url, inbox_uri=settings.inbox_uri)
    else:
        watcher = InboxWorkTrigger(inbox_uri=settings.inbox_uri, aws_conn_id="aws_default",
                                   poll_seconds=settings.inbox_watch_seconds,
                                   settle_seconds=settings.inbox_settle_seconds,
                                   settle_max_seconds=settings.inbox_settle_max_seconds)
    inbox = Asset(name="document_inbox", uri=settings.inbox_uri,
                  watchers=[AssetWatcher(name="document_inbox_watcher", trigger=watcher)])
    return AssetOrTimeSchedule(timetable=sweep, assets=[inbox]) if sweep else [inbox]


def work_sensor(task_id: str, *, bucket: str, bucket_key: str,
                has_work: Callable[[list[dict[str, Any]], dict[str, Any] | None], bool],
                skip_idle_run_types: tuple[str, ...] = ()) -> Any:
    """A sensor that waits for *work* under a prefix, not for objects: ``has_work`` gets the listing
    (Key, Size, ETag), an empty one too, and the run's params. No work before the timeout skips the run;
    runs of ``skip_idle_run_types`` skip at their first look."""
    from include.control.sensors import S3WorkSensor
    from include.control.settings import get_control_settings

    settings = get_control_settings()
    return S3WorkSensor(
        task_id=task_id,
        bucket_name=bucket,
        bucket_keys=bucket_key,
        has_work=has_work,
        aws_conn_id="aws_default",
        poke_interval=settings.sensor_poke_seconds,
        timeout=settings.sensor_timeout_seconds,
        mode="reschedule",
        soft_fail=True,  # nothing to do skips the run instead of failing it
        skip_idle_run_types=skip_idle_run_types,
    )


def ingest_tasks(start: Any = None, *, by_interval: bool = False) -> None:
    """An ingest run's tasks in the DAG being defined: plan the run (after ``start``, the task that waits
    for work, if any), each batch's five stage jobs, the summary that settles the ledger and writes the
    report, and the prune job. ``by_interval``: the run takes the objects that arrived (were last
    written) in its data interval, and deletes nothing."""
    from airflow.sdk import TriggerRule, task, task_group
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.control import ingest, metrics, report
    from include.control.operators import PipelineStageOperator, PruneVectorsOperator
    from include.control.settings import get_control_settings

    settings = get_control_settings()

    @task
    def plan_batches(params: dict | None = None, dag_run=None, ti=None, data_interval_start=None,
                     data_interval_end=None) -> list[dict]:
        params = params or {}
        return ingest.plan_run(
            dag_run.dag_id, dag_run.run_id, params.get("keys"), reprocess=bool(params.get("reprocess")),
            allow_mass_delete=bool(params.get("allow_mass_delete")),
            arrived=(data_interval_start, data_interval_end) if by_interval else None,
            is_active=ingest.airflow_run_is_active(ti),
        )

    @task_group
    def ingest_batch(batch: dict) -> None:
        upstream = batch
        for stage in ingest.STAGE_ORDER:
            job = PipelineStageOperator(task_id=stage, stage=stage, upstream=upstream,
                                        max_active_tis_per_dagrun=settings.max_parallel_batches, **ray_job_options())
            upstream = job.output

    # ALL_DONE: it settles the run whatever became of its batches, and a run with nothing to
    # do (its mapped stages skipped) is summarized too.
    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summarize(ti=None, dag_run=None) -> None:
        results = {
            # A list of task ids makes xcom_pull return every map index's value as a list.
            stage: ti.xcom_pull(task_ids=[f"ingest_batch.{stage}"]) or []
            for stage in ingest.STAGE_ORDER
        }
        try:
            summary = ingest.finish_run(dag_run.dag_id, dag_run.run_id, results)
        except ingest.NoPlan as exc:
            states = ti.get_task_states(dag_id=dag_run.dag_id, task_ids=["plan_batches"], run_ids=[dag_run.run_id])
            if states.get(dag_run.run_id, {}).get("plan_batches") == "skipped":
                raise AirflowSkipException("the sensor found no work: nothing to summarize") from exc
            raise AirflowFailException(str(exc)) from exc
        print(report.markdown(summary))
        ti.xcom_push(key="summary", value=report.for_xcom(summary))  # kept even when the run fails below
        metrics.publish_run(summary)  # CloudWatch, if PIPELINE_METRICS_DEPLOYMENT is set; never fails the run
        problems = [f"{len(summary['failed'])} document(s) failed"] if summary["failed"] else []
        quality = summary.get("quality") or {}
        if quality.get("run_failures") and quality.get("run_mode") == "fail":
            problems.append("the run's quality checks failed (PIPELINE_QUALITY__RUN=fail)")
        if problems:
            # Fail the run so nobody misses it, without retries: the same summary would fail again.
            raise AirflowFailException(f"{' and '.join(problems)}: see the summary above")

    batches = plan_batches()
    summary = summarize()
    if start is not None:
        start >> batches
    batches >> summary
    ingest_batch.expand(batch=batches) >> summary
    # ALL_DONE: a run with failed documents still prunes what it deleted and quarantined.
    summary >> PruneVectorsOperator(task_id="prune_vectors", trigger_rule=TriggerRule.ALL_DONE, **ray_job_options())
