"""Batches: the documents of a run, grouped so each stage is one Ray job per batch.

A batch is bounded by documents (``PIPELINE_BATCH_MAX_DOCUMENTS``) and by bytes of PDF
(``PIPELINE_BATCH_MAX_BYTES``); a file bigger than the byte bound is a batch on its
own. A run has at most ``PIPELINE_MAX_BATCHES_PER_RUN`` batches: a bigger drop gets
bigger batches rather than more of them, because Airflow maps a task over at most
``max_map_length`` items.

The plan of a run is written once to ``<artifacts>/runs/<dag>/<run>/``: a
``batch-NNNN/batch.json`` per batch, then ``plan.json``. A retried planning task
finds the plan and returns it unchanged, so every retry of every stage sees the
same batches.
"""

from __future__ import annotations

import hashlib
import logging
import re

from pydantic import BaseModel

from include.contract import BatchSpec, DocumentRef
from include.documents import Unreadable
from include.storage import Storage, join_uri

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class BatchRef(BaseModel):
    """What the DAG maps over: small, JSON-able, no document list."""

    batch_id: str
    batch_uri: str
    documents: int
    bytes: int


class Rejected(BaseModel):
    """A document refused before any stage ran (over the size limit): the summary quarantines it."""

    document: DocumentRef
    error: str


class RunPlan(BaseModel):
    """What a run set out to do; the run's report is made from it and the stage results."""

    run_id: str
    batches: list[BatchRef]
    unreadable: list[Unreadable] = []
    rejected: list[Rejected] = []
    # Source URI -> why the run processes it (new, changed, stale, retry, reprocess).
    reasons: dict[str, str] = {}
    unchanged: int = 0
    gave_up: int = 0
    # Source URI -> the run that holds its claim: another run is processing it.
    held: dict[str, str] = {}
    # Ingested documents no longer in the inbox: the prune job removes their vectors.
    deleted: list[str] = []
    # Documents the listing did not show but are still there (a HEAD found them): not deleted.
    still_there: list[str] = []
    # Deletions held back (over ``max_delete_fraction``): why, and which; the next run tries again.
    deletions_held: list[str] = []
    deletions_held_reason: str | None = None
    # The run's budget for paid calls (USD), shared among its batches by bytes; None: no limit.
    budget_usd: float | None = None


def plan_batches(
    documents: list[DocumentRef], *, max_documents: int, max_bytes: int, max_batches: int
) -> list[list[DocumentRef]]:
    """Consecutive runs of documents within both bounds, in the order given (deterministic)."""
    batches = _fill(documents, max_documents, max_bytes)
    while len(batches) > max_batches:
        # Twice the size each time: a few passes even for a very large drop.
        max_documents, max_bytes = max_documents * 2, max_bytes * 2
        batches = _fill(documents, max_documents, max_bytes)
        log.warning(
            "%d documents do not fit in %d batches of the configured size: using batches of up to "
            "%d documents / %d bytes", len(documents), max_batches, max_documents, max_bytes,
        )
    return batches


def _fill(documents: list[DocumentRef], max_documents: int, max_bytes: int) -> list[list[DocumentRef]]:
    batches: list[list[DocumentRef]] = []
    size = 0
    for doc in documents:
        if not batches or len(batches[-1]) >= max_documents or (batches[-1] and size + doc.size_bytes > max_bytes):
            batches.append([])
            size = 0
        batches[-1].append(doc)
        size += doc.size_bytes
    return batches


def run_folder(artifacts_uri: str, dag_id: str, run_id: str) -> str:
    """A readable, URI-safe folder per run (run ids hold ':' and '+'); the hash keeps it unique."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return join_uri(artifacts_uri, "runs", _UNSAFE.sub("_", dag_id), f"{_UNSAFE.sub('_', run_id)[:60]}-{digest}")


def write_plan(storage: Storage, folder: str, plan: RunPlan, batches: list[list[DocumentRef]],
               ingested_sha256: dict[str, str] | None = None) -> RunPlan:
    """Write a batch file per batch, then the plan (with its batches) last. ``ingested_sha256``:
    the hashes the first stage compares with, see ``BatchSpec``. The plan's budget is shared among
    the batches by their bytes: batches run side by side, and each stays within its own share."""
    refs = []
    def weight(documents: list[DocumentRef]) -> int:
        return sum(d.size_bytes + 1 for d in documents)  # + 1: empty files share too

    total = sum(weight(documents) for documents in batches)
    for number, documents in enumerate(batches, 1):
        batch_id = f"batch-{number:04d}"
        uri = join_uri(folder, batch_id, "batch.json")
        share = None if plan.budget_usd is None else round(plan.budget_usd * weight(documents) / total, 6)
        spec = BatchSpec(batch_id=batch_id, run_id=plan.run_id, documents=documents, budget_usd=share,
                         ingested_sha256={doc.source_uri: sha for doc in documents
                                          if (sha := (ingested_sha256 or {}).get(doc.source_uri))})
        storage.write_json(uri, spec.model_dump(mode="json"))
        refs.append(BatchRef(batch_id=batch_id, batch_uri=uri, documents=len(documents),
                             bytes=sum(d.size_bytes for d in documents)))
    plan = plan.model_copy(update={"batches": refs})
    # Last: a plan file means every batch file it names is there.
    storage.write_json(join_uri(folder, "plan.json"), plan.model_dump(mode="json"))
    return plan


def read_plan(storage: Storage, folder: str) -> RunPlan | None:
    uri = join_uri(folder, "plan.json")
    return RunPlan.model_validate(storage.read_json(uri)) if storage.exists(uri) else None
