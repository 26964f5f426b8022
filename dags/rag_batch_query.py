"""Questions in a Parquet file -> answers with their sources, on Ray Data.

Drop a Parquet file with a ``prompt`` column (and optionally ``id``) under the queries
prefix (``PIPELINE_QUERIES_URI``): the sensor finds files without current answers, and
each becomes one Ray job (embed -> retrieve -> prompt -> generate, each step an actor pool)
that writes ``<answers_uri>/<file>/part-*.parquet``. Questions with ``expected_source`` and
``expected_page`` columns are scored too (hit@1, hit@5, MRR), in the job's metrics.

Trigger with ``{"keys": ["q.parquet"]}`` to answer those files now, with
``{"reanswer": true}`` to answer files that already have answers again, and with
``{"where": {"doc_id": "..."}}`` to retrieve only from matching passages.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task
from ray_operators.operators.ray_job import RayJobOperator

from include.control import ingest, query_planning
from include.control.dag_parts import TASK_DEFAULTS, ray_job_options, work_sensor
from include.control.settings import get_control_settings

settings = get_control_settings()

with DAG(
    dag_id="rag_batch_query",
    description=__doc__.splitlines()[0],
    schedule=settings.query_schedule or None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    render_template_as_native_obj=True,
    user_defined_macros={
        "question_keys": lambda keys: ingest.sensor_keys(keys, settings.queries_uri),
        "job_runtime_env": ingest.runtime_env,
    },
    params={
        "keys": Param([], type="array", description="Only these questions files (relative to the queries prefix)."),
        "reanswer": Param(False, type="boolean", description="Answer files that already have answers again."),
        "where": Param({}, type="object",
                       description='Metadata filter for retrieval, e.g. {"doc_id": "..."} (empty: everything).'),
    },
    default_args=TASK_DEFAULTS,
    tags=["query", "ray", "rag"],
):
    wait_for_questions = work_sensor(
        "wait_for_questions", bucket=ingest.sensor_bucket(settings.queries_uri),
        bucket_key="{{ question_keys(params['keys']) }}", has_work=query_planning.has_unanswered,
    )

    @task
    def plan_questions(params: dict | None = None, dag_run=None) -> list[dict]:
        params = params or {}
        return query_planning.plan(dag_run.dag_id, dag_run.run_id, params.get("keys"), bool(params.get("reanswer")),
                             params.get("where") or None)

    jobs = plan_questions()
    answer_questions = RayJobOperator.partial(
        task_id="answer_questions",
        # Rendered on the worker: its PIPELINE_* settings travel with the job, its secrets do not.
        runtime_env="{{ job_runtime_env() }}",
        max_active_tis_per_dagrun=1,
        **ray_job_options(),
    ).expand_kwargs(jobs)

    @task
    def summarize(results: list[dict]) -> dict:
        summary = query_planning.summarize(list(results))
        print(summary["text"])
        return {"files": summary["files"], "totals": summary["totals"]}

    wait_for_questions >> jobs
    summarize(answer_questions.output)
