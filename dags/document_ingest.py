"""PDFs in the inbox -> Markdown -> chunks -> redacted, enriched chunks -> vectors -> vector store.

Wait until the inbox holds work (a new, changed or deleted document: the ledger knows
the rest), claim it for this run, plan it into batches, then for each batch run the
five stages, each as one Ray job over the whole batch (a bad document fails alone
inside its batch, then goes to quarantine). The summary settles every document in the
ledger and writes the run report; then one more Ray job removes the vectors of the
documents gone from the inbox or quarantined (none: no job).

Trigger with ``{"keys": ["a.pdf", ...]}`` (relative to the inbox, or full URIs) to look
only at those, with ``{"reprocess": true}`` to put them (or the whole inbox) through
every stage again, with ``{"recompute": ["embed"]}`` (or ``["all"]``) to redo stages
instead of reusing their results, and with ``{"allow_mass_delete": true}`` to remove more of
the index than a run may at once (``PIPELINE_MAX_DELETE_FRACTION``).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, TriggerRule, task, task_group
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.control import ingest, report
from include.control.dag_parts import TASK_DEFAULTS, ray_job_options, work_sensor
from include.control.operators import PipelineStageOperator, PruneVectorsOperator
from include.control.settings import get_control_settings

settings = get_control_settings()

with DAG(
    dag_id="document_ingest",
    description=__doc__.splitlines()[0],
    schedule=settings.ingest_schedule or None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Dropping a file into the inbox is all it takes: the DAG is not left paused.
    is_paused_upon_creation=False,
    render_template_as_native_obj=True,
    user_defined_macros={"sensor_keys": ingest.sensor_keys},
    params={
        "keys": Param([], type="array", description="Only these inbox keys (empty: all)."),
        "reprocess": Param(False, type="boolean",
                           description="Process the documents again even if the ledger has them unchanged."),
        "allow_mass_delete": Param(
            False, type="boolean",
            description="Remove every document gone from the inbox, even more than PIPELINE_MAX_DELETE_FRACTION "
            "of the index (for a deliberate clean-out).",
        ),
        "recompute": Param(
            [], type="array", items={"enum": ["all", *ingest.STAGE_ORDER]},
            description="Stages that redo every document instead of reusing recorded results.",
        ),
    },
    default_args=TASK_DEFAULTS,
    tags=["ingest", "ray", "rag"],
):
    wait_for_documents = work_sensor(
        "wait_for_documents", bucket=ingest.sensor_bucket(), bucket_key="{{ sensor_keys(params['keys']) }}",
        has_work=ingest.inbox_has_work,
    )

    @task
    def plan_batches(params: dict | None = None, dag_run=None, ti=None) -> list[dict]:
        params = params or {}
        return ingest.plan_run(
            dag_run.dag_id, dag_run.run_id, params.get("keys"), reprocess=bool(params.get("reprocess")),
            allow_mass_delete=bool(params.get("allow_mass_delete")), is_active=ingest.airflow_run_is_active(ti),
        )

    @task_group
    def ingest_batch(batch: dict) -> None:
        upstream = batch
        for stage in ingest.STAGE_ORDER:
            job = PipelineStageOperator(
                task_id=stage,
                stage=stage,
                upstream=upstream,
                max_active_tis_per_dagrun=settings.max_parallel_batches,
                **ray_job_options(),
            )
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
        if summary["failed"]:
            # Fail the run so nobody misses it, without retries: the same summary would fail again.
            raise AirflowFailException(f"{len(summary['failed'])} document(s) failed: see the summary above")

    batches = plan_batches()
    summary = summarize()
    wait_for_documents >> batches >> summary
    ingest_batch.expand(batch=batches) >> summary
    # ALL_DONE: a run with failed documents still prunes what it deleted and quarantined.
    summary >> PruneVectorsOperator(task_id="prune_vectors", trigger_rule=TriggerRule.ALL_DONE, **ray_job_options())
