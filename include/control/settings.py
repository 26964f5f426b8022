"""The Airflow side's settings: the jobs' settings plus what only the control plane reads.

The ledger (its URL carries a password), the schedules, how a run is cut into batches and the
sensors are read here and nowhere else: ``runtime_env`` sends a job only the variables that name a
field of ``PipelineSettings``, so none of these leaves the Airflow side. Same ``PIPELINE_`` prefix,
same environment: ``PIPELINE_LEDGER_URL``, ``PIPELINE_BATCH_MAX_DOCUMENTS``...
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr

from include.settings import PipelineSettings, get_settings


class ControlSettings(PipelineSettings):
    """What the DAGs, the sensors, the planner and the ledger read, on top of the jobs' settings."""

    ledger_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the ledger database (its password included: kept secret). Unset: "
        "the Airflow connection 'pipeline_ledger' if there is one, else a SQLite file <work_dir>/ledger.sqlite.",
    )
    ingest_schedule: str | None = Field(
        default="@hourly",
        description="Cron or preset of document_ingest's sweep: a run over the whole inbox that catches whatever "
        "no event announced (and retries what failed); empty = no sweep. With PIPELINE_INGEST_EVENTS on, drops "
        "start runs of their own within seconds.",
    )
    ingest_events: Literal["watch", "sqs", "off"] = Field(
        default="watch",
        description="What starts a document_ingest run besides the sweep and a person. watch: Airflow's "
        "triggerer lists the inbox and starts a run when it holds work (new, changed or deleted documents, "
        "from the ledger) no earlier event announced. sqs: S3 event notifications in the queue "
        "PIPELINE_INGEST_QUEUE_URL start runs (on AWS: no listing between sweeps). off: only the sweep and "
        "manual runs.",
    )
    ingest_queue_url: str | None = Field(
        default=None, description="The SQS queue the inbox bucket notifies (PIPELINE_INGEST_EVENTS=sqs)."
    )
    metrics_deployment: str | None = Field(
        default=None,
        description="The value of the Deployment dimension of the CloudWatch metrics each ingest run's summary "
        "publishes (DocumentsIngested and DocumentsFailed, namespace DocumentIngest, through the aws_default "
        "connection, in PIPELINE_AWS_REGION). On AWS: the stack name, the template's MetricsDeployment output, "
        "which its failed-document alarm reads. Unset or empty: no metrics are published.",
    )
    inbox_watch_seconds: float = Field(default=5.0, gt=0, description="How often the watcher lists the inbox.")
    inbox_settle_seconds: float = Field(
        default=3.0, ge=0,
        description="The watcher announces work once the listing has stayed the same this long, so a burst of "
        "uploads starts one run, not one per file.",
    )
    inbox_settle_max_seconds: float = Field(
        default=60.0, ge=0,
        description="...but no later than this after the listing first changed: a steady trickle of uploads "
        "still starts runs.",
    )
    ingest_interval_schedule: str = Field(
        default="@daily",
        description="The data intervals of document_ingest_interval (a cron or preset): each of its runs, "
        "and each run of a backfill of it, takes the inbox objects last written in its interval (what events "
        "already ingested costs a listing and no Ray job).",
    )
    query_schedule: str | None = Field(
        default="@hourly", description="Cron or preset for rag_batch_query; empty = manual only."
    )
    batch_max_documents: int = Field(
        default=64, ge=1, description="At most this many documents in one batch (one Ray job per stage)."
    )
    batch_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="At most this many bytes of PDF in one batch; a bigger file is a batch on its own.",
    )
    max_batches_per_run: int = Field(
        default=512,
        ge=1,
        description="A run maps its stages over at most this many batches (Airflow maps at most "
        "max_map_length, 1,024 by default): a bigger drop gets bigger batches, never a failed run.",
    )
    max_parallel_batches: int = Field(
        default=2,
        ge=1,
        description="Batches in flight per stage and run: bounds the Ray jobs a run has on the "
        "cluster at once.",
    )
    sensor_timeout_seconds: int = Field(
        default=50 * 60, description="How long a run waits for new or changed documents before it is skipped."
    )
    sensor_poke_seconds: int = Field(default=30, ge=1, description="How often the sensor lists the inbox.")
    ray_poll_seconds: float = Field(
        default=5.0, gt=0, description="How often a deferred Ray task's trigger asks for its job's status (the "
        "log streams as it is written, whatever this is).",
    )
    ray_wait_before_defer_seconds: float = Field(
        default=8.0, ge=0,
        description="How long a stage's task waits for its Ray job in its worker slot before it defers: a job "
        "that ends sooner (a small drop on warm workers takes a few seconds) ends its task there, without the "
        "round trip through the triggerer and the scheduler that resuming a deferred task costs. 0: defer at "
        "once, holding no slot while a job runs.",
    )
    max_document_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1,
        description="A bigger file is not ingested: it goes to quarantine, decided from its listed size.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs that may try one version of a document whose job kept failing; after "
        "that it waits for a changed file or a reprocess.",
    )
    max_usd_per_run: float | None = Field(
        default=10.0, ge=0,
        description="Most a run may spend on paid calls (picture descriptions, OpenAI enrichment and embeddings, "
        "priced by PIPELINE_LLM_PRICES). Each batch gets a share in proportion to its bytes; a stage that has "
        "spent its batch's share stops, and the documents it did not get to are postponed to the next run "
        "(not counted as attempts; the report lists them). Unset (null): no limit. The local backends cost "
        "nothing.",
    )
    unredacted_retention_days: float | None = Field(
        default=30.0, ge=0,
        description="Days an ingested version keeps its unredacted artifacts (extracted/ and chunks/, which hold "
        "the text before PII redaction) after it was ingested; then a run's prune job removes them (the sensor "
        "counts that as work). The redacted artifacts and the vectors stay. A later reprocess that needs them "
        "extracts again. Unset (null): kept until the document goes.",
    )
    max_delete_fraction: float = Field(
        default=0.25, ge=0, le=1,
        description="A run removes at most this share of the ingested documents it finds gone from the inbox "
        "(a lagging or partial listing, a sync that deletes before it uploads): more, and it removes none and "
        "says so, unless its conf says {\"allow_mass_delete\": true}.",
    )
    delete_guard_min_documents: int = Field(
        default=10, ge=0,
        description="So many deletions a run always makes, whatever share of the index they are (deleting the "
        "last few documents of a small index is not an accident to guard against).",
    )


@lru_cache(maxsize=1)
def get_control_settings() -> ControlSettings:
    return ControlSettings()


def reload_settings() -> None:
    """Read the environment again on both tiers' next ``get_*settings()`` (after it changed)."""
    get_settings.cache_clear()
    get_control_settings.cache_clear()
