"""PDFs in the inbox -> Markdown -> chunks -> redacted, enriched chunks -> vectors -> vector store.

Wait for documents in the inbox, plan them into batches, then for each batch run the
five stages, each as one Ray job over the whole batch (a bad document fails alone
inside its batch), and print per-stage totals. Trigger with ``{"keys": ["a.pdf", ...]}``
(relative to the inbox, or full URIs) to ingest only those, and with
``{"recompute": ["embed"]}`` (or ``["all"]``) to redo stages instead of reusing results.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import DAG, Param, TriggerRule, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from include import ingest
from include.settings import get_settings
from include.stage_operator import PipelineStageOperator

settings = get_settings()

with DAG(
    dag_id="document_ingest",
    description=__doc__.splitlines()[0],
    schedule=settings.ingest_schedule or None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    user_defined_macros={"sensor_keys": ingest.sensor_keys},
    params={
        "keys": Param([], type="array", description="Only these inbox keys (empty: all)."),
        "recompute": Param(
            [], type="array", items={"enum": ["all", *ingest.STAGE_ORDER]},
            description="Stages that redo every document instead of reusing recorded results.",
        ),
    },
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        # A task past this is killed, and its Ray job stopped with it (on_kill).
        "execution_timeout": timedelta(hours=2),
    },
    tags=["ingest", "ray", "rag"],
):
    wait_for_documents = S3KeySensor(
        task_id="wait_for_documents",
        bucket_name=ingest.sensor_bucket(),
        bucket_key="{{ sensor_keys(params['keys']) }}",
        wildcard_match=True,
        aws_conn_id="aws_default",
        poke_interval=30,
        timeout=settings.sensor_timeout_seconds,
        mode="reschedule",
        soft_fail=True,  # an empty inbox skips the run instead of failing it
    )

    @task
    def plan_batches(params: dict | None = None, dag_run=None) -> list[dict]:
        return ingest.plan_run(dag_run.dag_id, dag_run.run_id, (params or {}).get("keys"))

    @task_group
    def ingest_batch(batch: dict) -> None:
        upstream = batch
        for stage in ingest.STAGE_ORDER:
            job = PipelineStageOperator(
                task_id=stage,
                stage=stage,
                upstream=upstream,
                max_active_tis_per_dagrun=settings.max_parallel_batches,
            )
            upstream = job.output

    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    def summarize(ti=None, dag_run=None) -> None:
        results = {
            # A list of task ids makes xcom_pull return every map index's value as a list.
            stage: ti.xcom_pull(task_ids=[f"ingest_batch.{stage}"]) or []
            for stage in ingest.STAGE_ORDER
        }
        summary = ingest.summarize(dag_run.dag_id, dag_run.run_id, results)
        print(ingest.format_summary(summary))
        ti.xcom_push(key="summary", value=summary)  # kept even when the run fails below
        if summary["failed"]:
            # Fail the run so nobody misses it, without retries: the same summary would fail again.
            raise AirflowFailException(f"{len(summary['failed'])} document(s) failed: see the summary above")

    batches = plan_batches()
    summary = summarize()
    wait_for_documents >> batches >> summary
    ingest_batch.expand(batch=batches) >> summary
