"""PDFs in the inbox -> Markdown -> chunks -> redacted, enriched chunks -> vectors -> vector store.

A run starts when a drop puts work in the inbox (Airflow's triggerer watches it; see
``include/control/inbox_events.py``), at each sweep (``PIPELINE_INGEST_SCHEDULE``: it catches
whatever no event announced), or when a person triggers it. Wait until the inbox holds work (a new, changed or deleted document: the ledger knows
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

from airflow.sdk import DAG, Param

from include.control import ingest
from include.control.dag_parts import TASK_DEFAULTS, ingest_schedule, ingest_tasks, work_sensor
from include.control.settings import get_control_settings

settings = get_control_settings()

with DAG(
    dag_id="document_ingest",
    description=__doc__.splitlines()[0],
    schedule=ingest_schedule(),
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
        # An event or a sweep finding nothing is done (the watcher announces the next drop); a person's
        # run waits for the file they are about to drop, and so does the sweep when nothing watches.
        skip_idle_run_types=("asset_triggered",) + (("scheduled",) if settings.ingest_events != "off" else ()),
    )

    ingest_tasks(wait_for_documents)
