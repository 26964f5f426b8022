"""The inbox's arrivals of one data interval -> vectors: the ingest run that backfills.

The same tasks as ``document_ingest``, but each run takes only the inbox objects last written
(S3's LastModified, a file's mtime) within its data interval, ``[data_interval_start,
data_interval_end)`` of ``PIPELINE_INGEST_INTERVAL_SCHEDULE`` (daily), and deletes nothing (a
deletion has no arrival time: ``document_ingest``'s runs reconcile). The ledger decides as
always, so a document an event-driven run already ingested is unchanged here and costs no Ray job;
``{"reprocess": true}`` puts every arrival of the interval through the stages again.

A run at the end of each interval is a second sweep (its arrivals are ingested already: a listing,
no Ray job). Backfill it, for example the first two days of November, the intervals already run
included (Airflow starts a paused DAG's backfill runs only once it is unpaused)::

    airflow backfill create --dag-id document_ingest_interval \\
        --from-date 2026-11-01 --to-date 2026-11-02 --reprocess-behavior completed
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from include.control import ingest
from include.control.dag_parts import TASK_DEFAULTS, ingest_tasks
from include.control.settings import get_control_settings

settings = get_control_settings()

with DAG(
    dag_id="document_ingest_interval",
    description=__doc__.splitlines()[0],
    schedule=CronDataIntervalTimetable(settings.ingest_interval_schedule, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    render_template_as_native_obj=True,
    params={
        "reprocess": Param(False, type="boolean",
                           description="Process the interval's arrivals again even if the ledger has them unchanged."),
        "recompute": Param(
            [], type="array", items={"enum": ["all", *ingest.STAGE_ORDER]},
            description="Stages that redo every document instead of reusing recorded results.",
        ),
    },
    default_args=TASK_DEFAULTS,
    tags=["ingest", "ray", "rag", "backfill"],
):
    ingest_tasks(by_interval=True)
