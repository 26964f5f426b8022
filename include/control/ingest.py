"""What the ``document_ingest`` DAG does besides running stages, free of Airflow imports.

- ``inbox_has_work``: the sensor's test: is anything in the inbox new, changed or gone?
- ``plan_run``: what this run processes (the ledger says what is new, changed, stale or
  failed before), claimed for the run and grouped in batches, written once per run;
- ``record_stage``: each stage's per-document outcome, into the ledger;
- ``finish_run``: final status per document into the ledger, bad files to quarantine,
  the run report (JSON and Markdown) into the artifacts, and the prune spec: the sources
  (gone from the inbox, or quarantined) whose vectors the prune job removes;
- ``record_prune``: what that job removed, into the ledger;
- ``runtime_env``: what every stage's Ray job ships with.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from include.contract import BatchResult, BatchSpec, DocumentOutcome, DocumentRef, PruneResult, PruneSpec
from include.control import report
from include.control.batching import Rejected, RunPlan, plan_batches, read_plan, run_folder, write_plan
from include.control.inbox_keys import taken
from include.control.incremental import Pending, Reason, pending, tally
from include.control.ledger import Entry, Final, Ledger, Status
from include.control.quality import check_run
from include.control.quarantine import quarantine
from include.control.settings import ControlSettings, get_control_settings
from include.documents import key_uris, listed, planned
from include.fingerprints import STAGE_ORDER, pipeline_fingerprint
from include.settings import PROJECT_ROOT, is_job_setting
from include.storage import ObjectNotFound, Storage, join_uri, s3_object_info, split_s3_uri

log = logging.getLogger(__name__)

# Shipped with every job: the project code, without local state and tooling.
RUNTIME_EXCLUDES = [".venv", ".work", ".git", ".ci", "tests", "tools", "benchmarks", "*.pdf", "__pycache__"]
_GLOB_CHARS = re.compile(r"([*?\[])")

# (dag_id, run_id) -> is that run still queued or running?
RunIsActive = Callable[[str, str], bool]


def _assume_active(_dag_id: str, _run_id: str) -> bool:
    """Without Airflow to ask, another run's claim is respected."""
    return True


def airflow_run_is_active(ti: Any) -> RunIsActive:
    """Ask Airflow (through the running task) whether the run holding a claim still runs."""
    from airflow.sdk.exceptions import AirflowRuntimeError

    def active(dag_id: str, run_id: str) -> bool:
        try:
            state = ti.get_dagrun_state(dag_id, run_id)
        except AirflowRuntimeError as exc:
            if "not_found" in str(exc.error.detail):
                return False  # the run was deleted: nothing holds its claims
            raise
        return state in ("queued", "running")

    return active


def inbox_has_work(files: list[dict[str, Any]], params: dict[str, Any] | None = None) -> bool:
    """The sensor's ``check_fn``: true when a listed object is new, changed, stale or to retry,
    or an ingested document has left the inbox. Reads the listing and the ledger, no object.

    ``files`` are the listing entries the sensor found (``Key``, ``Size``, ``ETag``). A run
    that names its keys, or asks to reprocess, has work as soon as those objects exist.
    """
    params = params or {}
    if params.get("keys") or params.get("reprocess"):
        return True
    settings = get_control_settings()
    ledger = Ledger.open(settings)
    found = inbox_work(files, ledger)
    due = unredacted_due(settings, ledger)
    log.info("Inbox: %s; %d version(s) past the retention of their unredacted artifacts", found.describe(), len(due))
    return bool(found or due)


def inbox_work(files: list[dict[str, Any]], ledger: Ledger | None = None) -> Pending:
    """What of the whole inbox, as listed (``Key``, ``Size``, ``ETag``), is work by the ledger."""
    settings = get_control_settings()
    bucket = split_s3_uri(settings.inbox_uri)[0]
    listing, refused = taken(settings, [s3_object_info(bucket, entry) for entry in files])
    for item in refused:
        log.warning("not work: %s", item.error)
    entries = (ledger or Ledger.open(settings)).entries(under=settings.inbox_uri)
    return pending(listing, entries, fingerprint=pipeline_fingerprint(settings), max_attempts=settings.max_attempts)


def plan_run(
    dag_id: str,
    run_id: str,
    keys: list[str] | None = None,
    *,
    reprocess: bool = False,
    allow_mass_delete: bool = False,
    arrived: tuple[datetime, datetime] | None = None,
    is_active: RunIsActive = _assume_active,
) -> list[dict[str, Any]]:
    """The run's batches; planned, claimed and written on the first call, read back on a retry.

    With ``keys``, only those objects (relative to the inbox, or full URIs) are looked at,
    and nothing is deleted; the same with ``arrived`` (a run's data interval): only the objects
    last written in ``[start, end)``; with ``reprocess``, they go through every stage again even
    if the ledger has them ingested and unchanged; with ``allow_mass_delete``, every document
    gone from the inbox is removed, however many (see ``ControlSettings.max_delete_fraction``).
    """
    settings = get_control_settings()
    storage = Storage(settings)
    folder = run_folder(settings.artifacts_uri, dag_id, run_id)
    plan = read_plan(storage, folder)
    if plan is not None:
        log.info("This run's plan is already written at %s: using it", folder)
    else:
        plan = _plan(settings, storage, folder, dag_id, run_id, keys, reprocess, allow_mass_delete, arrived, is_active)
    for item in plan.unreadable:
        log.warning("not ingested: %s", item.error)
    for uri, holder in plan.held.items():
        log.warning("not ingested by this run: %s is being processed by run %s", uri, holder)
    if plan.deletions_held_reason:
        log.warning("%s", plan.deletions_held_reason)
    documents = sum(b.documents for b in plan.batches)
    if not plan.batches and not plan.deleted and not plan.rejected:
        log.info("Nothing to do: %d document(s) unchanged since they were ingested, %d held by another run; "
                 "no Ray job is submitted", plan.unchanged, len(plan.held))
    else:
        log.info("%d document(s) to process in %d batch(es) (%s), %d unchanged, %d deleted, at %s",
                 documents, len(plan.batches), _reason_counts(plan), plan.unchanged, len(plan.deleted), folder)
    return [batch.model_dump() for batch in plan.batches]


def _plan(settings: ControlSettings, storage: Storage, folder: str, dag_id: str, run_id: str,
          keys: list[str] | None, reprocess: bool, allow_mass_delete: bool,
          arrived: tuple[datetime, datetime] | None, is_active: RunIsActive) -> RunPlan:
    """Decide from the listing and the ledger alone: no object is read here (the extract job
    hashes what it processes, and tells a file copied over itself from a changed one)."""
    ledger = Ledger.open(settings)
    fingerprint = pipeline_fingerprint(settings)
    listing, unreadable = listed(storage, settings.inbox_uri, keys)
    if arrived is not None:
        start, end = (moment.timestamp() for moment in arrived)
        listing = [info for info in listing if info.modified is not None and start <= info.modified < end]
        log.info("%d object(s) of the inbox arrived in [%s, %s)", len(listing), *arrived)
    listing, refused = taken(settings, listing)
    unreadable += refused
    whole_inbox = not keys and arrived is None
    if not whole_inbox:
        entries = ledger.entries(source_uris=[info.uri for info in listing])
    else:
        entries = ledger.entries(under=settings.inbox_uri)
    first = pending(listing, entries, fingerprint=fingerprint, max_attempts=settings.max_attempts,
                    reprocess=reprocess, whole_inbox=whole_inbox)
    claimed, held = ledger.claim(dag_id, run_id, [planned(info) for info in first.work], fingerprint, is_active)
    rejected = [
        Rejected(document=doc, error=f"{doc.source_uri}: {doc.size_bytes} bytes is over "
                 f"the limit of {settings.max_document_bytes} (PIPELINE_MAX_DOCUMENT_BYTES)")
        for doc in claimed if doc.size_bytes > settings.max_document_bytes
    ]
    too_big = {r.document.source_uri for r in rejected}
    gone = [uri for uri in first.deleted
            if not (entries[uri].claim_run_id and entries[uri].claim_run_id != run_id
                    and is_active(entries[uri].claim_dag_id or dag_id, entries[uri].claim_run_id))]
    deleted, still_there = _confirmed_gone(storage, gone)
    held_back, why = _deletions_held(settings, entries, deleted, allow_mass_delete)
    if held_back:
        deleted = []
    batches = plan_batches(
        [doc for doc in claimed if doc.source_uri not in too_big],
        max_documents=settings.batch_max_documents,
        max_bytes=settings.batch_max_bytes,
        max_batches=settings.max_batches_per_run,
    )
    kept = {doc.source_uri for doc in claimed}
    plan = RunPlan(
        run_id=run_id, batches=[], unreadable=unreadable, rejected=rejected,
        reasons={uri: reason for uri, reason in first.reasons.items() if uri in kept},
        unchanged=first.unchanged, gave_up=first.gave_up, held=held, deleted=deleted, still_there=still_there,
        deletions_held=held_back, deletions_held_reason=why, budget_usd=settings.max_usd_per_run,
    )
    # Only a listing change may turn out to be no change: a reprocess or a stale fingerprint is work anyway.
    retagged = {uri for uri in kept if plan.reasons.get(uri) == Reason.CHANGED}
    plan = write_plan(storage, folder, plan, batches, ingested_sha256=_ingested_sha256(entries, retagged, fingerprint))
    ledger.start_run(dag_id, run_id, {**tally(list(plan.reasons.values())), "unchanged": plan.unchanged, "deleted": len(deleted)})
    return plan


def _confirmed_gone(storage: Storage, uris: list[str]) -> tuple[list[str], list[str]]:
    """Of the documents the listing no longer shows, those a HEAD confirms gone, and those still there
    (an S3-compatible store's listing may lag its writes, or page short)."""
    gone, there = [], []
    for uri in uris:
        try:
            storage.stat(uri)
        except ObjectNotFound:
            gone.append(uri)
            continue
        log.warning("%s: missing from the inbox's listing but still there: not deleted", uri)
        there.append(uri)
    return gone, there


def _deletions_held(settings: ControlSettings, entries: dict[str, Entry], deleted: list[str],
                    allow: bool) -> tuple[list[str], str | None]:
    """Every deletion, held back with the reason, when they are more of the index than a run may remove."""
    indexed = sum(1 for entry in entries.values() if entry.indexed_doc_id)
    limit = max(settings.delete_guard_min_documents, int(settings.max_delete_fraction * indexed))
    if allow or len(deleted) <= limit:
        return [], None
    return deleted, (
        f"{len(deleted)} of the {indexed} indexed documents are gone from the inbox, more than this run may remove "
        f"({limit}: PIPELINE_MAX_DELETE_FRACTION {settings.max_delete_fraction}, at least "
        f"PIPELINE_DELETE_GUARD_MIN_DOCUMENTS {settings.delete_guard_min_documents}); none is removed. If they "
        "were deleted on purpose, trigger the DAG with {\"allow_mass_delete\": true}")


def _ingested_sha256(entries: dict[str, Entry], uris: set[str], fingerprint: str) -> dict[str, str]:
    """What the extract job compares its hash with: the bytes ingested under this fingerprint."""
    return {uri: entry.content_sha256 for uri in uris if (entry := entries.get(uri)) is not None
            and entry.status == Status.INGESTED and entry.pipeline_fingerprint == fingerprint
            and entry.content_sha256}


def _reason_counts(plan: RunPlan) -> str:
    return ", ".join(f"{n} {name}" for name, n in tally(list(plan.reasons.values())).items() if n) or "none"


def sensor_bucket(prefix_uri: str | None = None) -> str:
    return split_s3_uri(prefix_uri or get_control_settings().inbox_uri)[0]


def sensor_keys(keys: list[str] | None, prefix_uri: str | None = None) -> list[str]:
    """Keys in the bucket of ``prefix_uri`` (default: the inbox) a sensor waits for: the named ones
    (relative to the prefix, or full URIs), else anything under the prefix.

    Relative to the bucket, so no URL parsing can cut a key at '#' or '?'; the sensor
    matches them as wildcards, so a key's own '*', '?' and '[' are escaped.
    """
    under = prefix_uri or get_control_settings().inbox_uri
    prefix = split_s3_uri(under)[1]
    if not keys:
        return [_GLOB_CHARS.sub(r"[\1]", prefix) + "*"]
    return [_GLOB_CHARS.sub(r"[\1]", split_s3_uri(uri)[1]) for uri in key_uris(under, keys)]


def runtime_env() -> dict[str, Any]:
    """Project code as the job's working dir, plus this worker's variables of the settings jobs read:
    the Airflow side's own, the ledger's URL and its password among them, stay here."""
    env_vars = {name: value for name, value in os.environ.items() if is_job_setting(name)}
    return {"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES, "env_vars": env_vars}


def stage_result_prefix(dag_id: str, run_id: str, batch_id: str, stage: str) -> str:
    """Where the jobs of one stage and batch write their results (one file per job)."""
    return f"{run_folder(get_control_settings().artifacts_uri, dag_id, run_id)}/{batch_id}/{stage}"


def record_stage(run_id: str, result: BatchResult) -> None:
    """One stage's outcome for each document of a batch, into the ledger (history and progress)."""
    Ledger.open(get_control_settings()).record_stage(run_id, result.stage, result.documents, result.submission_id)


PRUNE_SPEC = "prune.json"


def prune_spec_uri(dag_id: str, run_id: str) -> str:
    """Where the summary writes the run's prune spec, when it has sources to prune."""
    return join_uri(run_folder(get_control_settings().artifacts_uri, dag_id, run_id), PRUNE_SPEC)


def record_prune(run_id: str, result: PruneResult) -> None:
    """The prune job's result into the ledger: those sources have no vector left in the store, those
    versions no unredacted artifact."""
    ledger = Ledger.open(get_control_settings())
    for uri, count in result.removed.items():
        ledger.mark_pruned(run_id, uri, count, kept_doc_id=result.kept.get(uri))
    ledger.mark_expired(run_id, result.expired)


def unredacted_due(settings: ControlSettings, ledger: Ledger) -> list[str]:
    """The indexed versions past ``unredacted_retention_days`` whose unredacted artifacts are still there."""
    if settings.unredacted_retention_days is None:
        return []
    return ledger.unredacted_due(datetime.now(UTC) - timedelta(days=settings.unredacted_retention_days))


class NoPlan(LookupError):
    """The run planned nothing: its planning task was skipped (no work) or failed."""


@dataclass
class _Ending:
    """Where one document's run ended: at a stage with an error, or ingested (``stage`` None)."""

    document: DocumentRef
    stage: str | None = None
    error: str | None = None
    bad_file: bool = False
    cause: str | None = None
    # The extract job found the bytes the ledger has ingested: nothing was redone.
    unchanged: bool = False
    # False when the stage's job failed (the infrastructure's doing, see ``include.failures``), or the
    # batch's budget ran out before the document: it did nothing wrong, so the run is not one of its attempts.
    counts_attempt: bool = True
    postponed: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


def finish_run(dag_id: str, run_id: str, results: dict[str, list[dict[str, Any] | None]]) -> dict[str, Any]:
    """Settle every document the run claimed, quarantine bad files, write the run report.

    ``results`` maps a stage name to the XComs its mapped tasks pushed (one per batch; None
    where a task pushed nothing); each names the batch result it read. Returns the
    summary, which names the report's URI. ``NoPlan`` if the run planned nothing.
    """
    settings = get_control_settings()
    storage = Storage(settings)
    folder = run_folder(settings.artifacts_uri, dag_id, run_id)
    plan = read_plan(storage, folder)
    if plan is None:
        raise NoPlan(f"run {run_id} has no plan at {folder}: its planning task did not finish")
    outcomes, stages, validation_files = _stage_results(storage, results)
    endings = [_ending(doc, batch.batch_id, outcomes)
               for batch in plan.batches
               for doc in BatchSpec.model_validate(storage.read_json(batch.batch_uri)).documents]
    endings += [_Ending(item.document, "plan", item.error, bad_file=True, cause="bad_file") for item in plan.rejected]

    finals: list[Final] = []
    rows: list[dict[str, Any]] = []
    quarantined: list[str] = []
    for end in endings:
        document, status, moved = end.document, Status.INGESTED, None
        if end.postponed:
            status = Status.POSTPONED
        elif end.error is not None:
            status = Status.FAILED
            if end.bad_file:
                moved = quarantine(settings, storage, document, stage=end.stage or "plan", error=end.error,
                                   dag_id=dag_id, run_id=run_id)
            if moved:
                status = Status.QUARANTINED
                quarantined.append(document.source_uri)  # its key left the inbox: older vectors go too
        finals.append(Final(document, status, stage_reached=_stage_reached(end), error=end.error,
                            error_stage=end.stage, error_cause=end.cause, quarantine_uri=moved,
                            unchanged=end.unchanged, counts_attempt=end.counts_attempt,
                            counts={k: int(v) for k, v in end.metrics.items() if k in ("pages", "chunks", "vectors")}))
        if end.unchanged:
            continue  # counted with the unchanged, not among the documents the run processed
        rows.append({"source_uri": document.source_uri, "doc_id": document.doc_id,
                     "reason": plan.reasons.get(document.source_uri, "reprocess"), "status": str(status),
                     "stage": end.stage, "error": end.error, "cause": end.cause, "quarantine_uri": moved,
                     **end.metrics})

    # Replaced files too: the prune job removes their older versions' artifacts (load removed the vectors).
    replaced = [final.source_uri for final in finals if final.status == Status.INGESTED and not final.unchanged
                and plan.reasons.get(final.source_uri) == Reason.CHANGED]
    to_prune = [*plan.deleted, *quarantined, *replaced]
    ledger = Ledger.open(settings)
    expire = unredacted_due(settings, ledger)
    if to_prune or expire:  # the prune task runs the job that removes them, where the store's credentials are
        storage.write_json(join_uri(folder, PRUNE_SPEC),
                           PruneSpec(run_id=run_id, source_uris=to_prune, expire_doc_ids=expire).model_dump())
    ledger.finish(run_id, finals)
    summary = report.summarize(dag_id, run_id, plan, stages, rows,
                               found_unchanged=sum(final.unchanged for final in finals))
    entries = ledger.entries(source_uris=[row["source_uri"] for row in rows]).values()
    still_claimed = {entry.source_uri for entry in entries if entry.claim_run_id == run_id}
    summary["quality"] = check_run(settings, storage, folder, run_id, rows, still_claimed, validation_files,
                                   stages)
    summary["report_uri"] = report.write(storage, folder, summary)
    ledger.finish_run(dag_id, run_id, report.run_totals(summary))
    return summary


def _stage_results(
    storage: Storage, results: dict[str, list[dict[str, Any] | None]]
) -> tuple[dict[str, dict[str, DocumentOutcome]], dict[str, dict[str, float]], list[tuple[str, int]]]:
    """Each stage's outcome per document id, each stage's totals over its batches, and the files of
    its quality gate's validation results with how many of each failed or warned."""
    outcomes: dict[str, dict[str, DocumentOutcome]] = {}
    stages: dict[str, dict[str, float]] = {}
    validations: list[tuple[str, int]] = []
    for stage in STAGE_ORDER:
        # A skipped or failed task pushed nothing: its entry is None.
        batch_results = [BatchResult.model_validate(storage.read_json(x["result_uri"]))
                         for x in results.get(stage) or [] if x]
        outcomes[stage] = {o.doc_id: o for result in batch_results for o in result.documents}
        validations += [(result.outputs["quality"], int(result.metrics.get("quality_failed", 0)
                                                       + result.metrics.get("quality_warned", 0)))
                        for result in batch_results if "quality" in result.outputs]
        totals: dict[str, float] = {"batches": len(batch_results)}
        totals["documents"] = sum(len(r.succeeded) for r in batch_results)
        totals["failed"] = sum(len(r.failed) for r in batch_results)
        for result in batch_results:
            for name, value in result.metrics.items():
                totals[name] = totals.get(name, 0.0) + value
        stages[stage] = totals
    return outcomes, stages, validations


def _stage_reached(end: _Ending) -> str | None:
    """The last stage the document's version went through."""
    if end.stage is None:
        return STAGE_ORDER[-1]
    if end.stage not in STAGE_ORDER:
        return None
    index = STAGE_ORDER.index(end.stage)
    return STAGE_ORDER[index - 1] if index else None


def _ending(planned: DocumentRef, batch_id: str, outcomes: dict[str, dict[str, DocumentOutcome]]) -> _Ending:
    """The first stage that did not succeed for the document, or none: it is ingested. The
    document as the extract job hashed it, when that job got to it."""
    metrics: dict[str, float] = {"cost_usd": 0.0}
    first = outcomes[STAGE_ORDER[0]].get(planned.doc_id)
    sha = first.content_sha256 if first is not None else None
    document = planned.model_copy(update={"content_sha256": sha}) if sha else planned
    if first is not None and first.status == "unchanged":
        return _Ending(document, unchanged=True)
    for stage in STAGE_ORDER:
        outcome = outcomes[stage].get(document.doc_id)
        if outcome is None:
            return _Ending(document, stage, f"the {stage} job of {batch_id} failed (not this document's doing: "
                           "it is tried again next run, and this run is not counted among its attempts); see "
                           "that task's log", cause="infrastructure", counts_attempt=False, metrics=metrics)
        if outcome.status == "postponed":
            return _Ending(document, stage, outcome.error, counts_attempt=False, postponed=True, metrics=metrics)
        if outcome.status == "failed":
            return _Ending(document, stage, (outcome.error or "failed").splitlines()[0], outcome.bad_file,
                           cause=outcome.cause, metrics=metrics)
        metrics.update({k: int(v) for k, v in outcome.metrics.items() if k in report.DOCUMENT_METRICS})
        metrics["cost_usd"] += outcome.metrics.get("cost_usd", 0.0)  # enrich and embed, on a paid API
    metrics["cost_usd"] = round(metrics["cost_usd"], 6)
    return _Ending(document, metrics=metrics)
