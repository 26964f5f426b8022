"""Erase documents: every trace of each one goes (vectors, artifacts, the inbox and quarantine's files,
the ledger's row and history, its key and ids in the run folders), and the task log says what went.

Trigger with ``{"documents": ["w9-redacted-signed-9bff12ea0805", ...]}``: document ids (any version's,
as the ledger, the report and the vector store name them), or keys relative to the inbox, or URIs.
Ids keep the key out of this run's conf, which Airflow stores. See ``include.control.erasure``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from include.control import erasure, ingest
from include.control.dag_parts import TASK_DEFAULTS, ray_job_options
from include.control.operators import PruneVectorsOperator

with DAG(
    dag_id="document_erase",
    description=__doc__.splitlines()[0],
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    params={"documents": Param([], type="array", minItems=1, items={"type": "string"},
                               description="Document ids, inbox keys or URIs to erase.")},
    default_args=TASK_DEFAULTS,
    tags=["erase", "ray", "privacy"],
):

    @task
    def plan_erasure(params: dict | None = None, dag_run=None, ti=None) -> dict:
        return erasure.plan_erasure(dag_run.dag_id, dag_run.run_id, (params or {})["documents"],
                                    is_active=ingest.airflow_run_is_active(ti))

    remove = PruneVectorsOperator(task_id="remove_vectors_and_artifacts", **ray_job_options())

    @task
    def forget(pruned: dict, dag_run=None) -> dict:
        report = erasure.forget(dag_run.dag_id, dag_run.run_id, pruned["result_uri"])
        for line in erasure.report_lines(report):
            print(line)
        return {key: value for key, value in report.items() if key != "documents"}

    plan_erasure() >> remove
    forget(remove.output)
