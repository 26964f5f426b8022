"""The job contract: what Airflow hands a Ray job, and what the job hands back.

Both tiers import this module, and it imports nothing heavy (pydantic and the standard
library): the Airflow side reads results and manifests through it without the data
plane installed, and the jobs write them through it.

- ``DocumentRef``: a source document as the pipeline knows it.
- ``BatchSpec``: the batch file an ingest job's first stage reads.
- ``StageManifest``: one document's outcome in one stage, kept beside its outputs.
- ``PruneSpec``: the sources a run's prune job removes from the vector store.
- ``JobResult``: every job's result document (``<result prefix>/<submission id>.json``):
  status, error, whether a retry can help, outputs (URIs) and metrics (numbers).
  ``BatchResult`` is an ingest stage's, with one ``DocumentOutcome`` per document;
  ``PruneResult`` a prune job's, with the vectors it removed per source.
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from include.storage import object_name

Metrics = dict[str, float]
Outputs = dict[str, str]
# The metrics of what calls to a paid API used (``include.backends.openai_api.Usage``): spent once,
# not again when a stage's result is reused; the run report sums them into its cost.
SPEND_METRICS = ("requests", "prompt_tokens", "completion_tokens", "retries", "cost_usd")


def now() -> datetime:
    return datetime.now(UTC)


def validations_uri(result_uri: str | None) -> str | None:
    """Where a stage's job writes its quality gate's validation results: beside its result."""
    return f"{result_uri.removesuffix('.json')}.quality.json" if result_uri else None


class DocumentRef(BaseModel):
    """A version of a source document: planned from the inbox's listing, hashed by the extract job.

    The id comes from the listing (see ``include.documents``), so planning reads no byte;
    ``content_sha256`` is None until the first stage's job has read the object.
    """

    model_config = ConfigDict(frozen=True)

    doc_id: str
    source_uri: str
    size_bytes: int
    # S3's ETag (a local file's mtime and size) when listed: the version the run planned.
    object_version: str | None = None
    content_sha256: str | None = None

    @property
    def name(self) -> str:
        """The object's file name as its key spells it (``file://`` URIs decoded)."""
        return object_name(self.source_uri)


class BatchSpec(BaseModel):
    """A batch's file: what the first stage's job reads."""

    batch_id: str
    run_id: str
    documents: list[DocumentRef]
    # Source URI -> the hash of the bytes the ledger has ingested under this run's pipeline
    # fingerprint, for objects whose listing changed: the same bytes again are "unchanged".
    ingested_sha256: dict[str, str] = {}
    # The batch's share of the run's budget for paid calls (USD), its stages' in all; None: no limit.
    budget_usd: float | None = None


class PruneSpec(BaseModel):
    """What a run's prune job reads: the sources whose vectors and artifacts go (gone from the
    inbox, or quarantined), or whose older versions' do (replaced), so no store credential is
    needed where the run is planned. An erasure's (``document_erase``) is the same: its sources
    are gone from the inbox (the Airflow side removed them first), so nothing of theirs is kept."""

    run_id: str
    source_uris: list[str]
    # Ingested versions whose unredacted artifacts (extracted text, chunks) are past their retention.
    expire_doc_ids: list[str] = []


class StageManifest(BaseModel):
    """One document's outcome in one stage."""

    stage: str
    document: DocumentRef
    status: Literal["succeeded", "failed"]
    outputs: Outputs = {}
    metrics: Metrics = {}
    error: str | None = None
    # False when trying again cannot help (the input itself is bad).
    retryable: bool = True
    bad_file: bool = False
    config_fingerprint: str
    # What the outputs were made from, and a digest of what they hold: a downstream
    # stage reuses its result only if its upstream's outputs are still the same.
    upstream_manifest_uri: str | None = None
    upstream_digest: str | None = None
    output_digest: str | None = None
    submission_id: str | None = None
    started_at: datetime
    finished_at: datetime


class DocumentOutcome(BaseModel):
    doc_id: str
    source_uri: str
    # "unchanged": the first stage found the bytes the ledger has ingested (a file copied over
    # itself): no later stage sees it. "postponed": not worked on, the batch's budget for paid calls
    # being spent; the next run takes it, and this one is not counted among its attempts.
    status: Literal["succeeded", "failed", "unchanged", "postponed"]
    # None when the document was settled before any stage ran on it (unchanged, or vanished).
    manifest_uri: str | None = None
    # The bytes the job read, once the first stage has hashed them.
    content_sha256: str | None = None
    error: str | None = None
    retryable: bool = True
    # The file itself is bad (``BadFileError``): it goes to quarantine.
    bad_file: bool = False
    # Why it failed, for people to filter on (``DocumentError.cause``): document, bad_file, time_limit,
    # stale, quality_gate (its output failed a stage's quality gate), store_check.
    cause: str | None = None
    reused: bool = False
    metrics: Metrics = {}


class JobResult(BaseModel):
    """What one Ray job did: the only thing the Airflow side reads back from it."""

    submission_id: str | None = None
    # "failed": the job itself failed (cluster, storage, a crash, a bug).
    status: Literal["succeeded", "failed"]
    error: str | None = None
    # False when a retry of the job would fail the same way (a bad questions file, a native crash).
    retryable: bool = True
    outputs: Outputs = {}
    metrics: Metrics = {}
    started_at: datetime
    finished_at: datetime

    @staticmethod
    def failure_fields(exc: BaseException) -> dict[str, object]:
        """The fields of a failed result: the error with its traceback's tail, and whether a
        retry can help (an exception says so with a ``retryable`` attribute; default yes)."""
        return {"status": "failed", "retryable": getattr(exc, "retryable", True),
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"}


class BatchResult(JobResult):
    """What one ingest stage's job did for one batch, document by document."""

    stage: str
    batch_id: str
    documents: list[DocumentOutcome] = []
    # The versions of the stage's libraries the job ran with (the pinned ones: it checks).
    libraries: dict[str, str] = {}
    # What is left of the batch's budget for paid calls after this stage (the next stage's budget).
    budget_usd_left: float | None = None

    @property
    def succeeded(self) -> list[DocumentOutcome]:
        return [d for d in self.documents if d.status == "succeeded"]

    @property
    def failed(self) -> list[DocumentOutcome]:
        return [d for d in self.documents if d.status == "failed"]

    @property
    def postponed(self) -> list[DocumentOutcome]:
        return [d for d in self.documents if d.status == "postponed"]


class PruneResult(JobResult):
    """What a prune job removed: vectors per source URI; and the sources found in the inbox again,
    with the version (doc id) whose vectors it left."""

    removed: dict[str, int] = {}
    kept: dict[str, str] = {}
    # Artifact files removed per source.
    files_removed: dict[str, int] = {}
    # Unredacted artifact files removed per document version past its retention.
    expired: dict[str, int] = {}
