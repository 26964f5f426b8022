"""Erasure: every trace of a document goes, for a request to be forgotten (the ``document_erase`` DAG).

1. ``plan_erasure`` (here, on the Airflow side): what the run names (document ids, keys relative to
   the inbox, or URIs) is looked up in the ledger; the sources are claimed, so no ingest run takes
   them meanwhile (one that is working on a source fails the erasure, naming the run: erase again
   when it ends); the inbox object and the quarantine's copy and note are removed, so nothing
   brings the document back; the prune spec is written.
2. The prune job (on Ray, where the store's credentials are): every version's vectors and
   artifacts, as for a deleted document (``include.prune``).
3. ``forget`` (here): the ledger's row and history of each source; every file of the run folders
   that named it (plans, batch files, stage results, reports) rewritten with ``[erased]`` in place
   of its key and ids; the erasure's own spec and job result, which name the keys. What was removed
   goes to the erasure report and the task log, each key redacted (``include.pii_shapes``).

Not reached: Airflow's task logs and XComs of the runs that processed the document and Ray's job
logs name its key; the erasure run's conf names whatever it was given (give document ids); an
S3 bucket with versioning keeps older versions of the objects removed.
"""

from __future__ import annotations

import logging
from typing import Any

from include.contract import PruneResult, PruneSpec
from include.control.batching import run_folder
from include.control.ingest import PRUNE_SPEC, RunIsActive, prune_spec_uri
from include.control.ledger import Ledger
from include.control.quarantine import NOTE_SUFFIX
from include.control.settings import get_control_settings
from include.documents import key_uris, redacted_uri
from include.storage import Storage, join_uri

log = logging.getLogger(__name__)

ERASED = "[erased]"
REPORT = "erasure.json"


class NothingToErase(LookupError):
    """A name the ledger does not know, nor the inbox holds."""


class ErasureHeld(RuntimeError):
    """An ingest run is working on a source to erase."""


def shown(uri: str) -> str:
    """A source as an erasure names it: its key may be the personal data."""
    return redacted_uri(uri)[0]


def plan_erasure(dag_id: str, run_id: str, names: list[str], *, is_active: RunIsActive) -> dict[str, Any]:
    """Resolve, claim and unlink the sources named; write the prune spec. Safe to retry."""
    settings = get_control_settings()
    storage, ledger = Storage(settings), Ledger.open(settings)
    sources, unknown = _resolve(settings.inbox_uri, storage, ledger, names)
    if unknown:
        raise NothingToErase(f"{len(unknown)} of the names given are no document the ledger knows nor an object "
                             f"in the inbox: {', '.join(shown(name) for name in unknown)}")
    entries = ledger.entries(source_uris=sources)
    held = ledger.hold(dag_id, run_id, [uri for uri in sources if uri in entries], is_active)
    if held:
        raise ErasureHeld("; ".join(f"{shown(uri)} is being processed by run {run}" for uri, run in held.items())
                          + ": nothing was erased; erase again when that run has ended")
    unlinked = 0
    for uri in sources:
        quarantined = entries[uri].quarantine_uri if uri in entries else None
        for target in (uri, *((quarantined, quarantined + NOTE_SUFFIX) if quarantined else ())):
            if storage.exists(target):
                storage.delete(target)
                unlinked += 1
    storage.write_json(prune_spec_uri(dag_id, run_id), PruneSpec(run_id=run_id, source_uris=sources).model_dump())
    log.info("Erasing %d document(s): %s; %d object(s) removed from the inbox and the quarantine", len(sources),
             ", ".join(shown(uri) for uri in sources), unlinked)
    return {"documents": len(sources), "objects_removed": unlinked}


def _resolve(inbox_uri: str, storage: Storage, ledger: Ledger, names: list[str]) -> tuple[list[str], list[str]]:
    """Source URIs for the names (a document id of any version the ledger records, a key, a URI), and the
    URIs of the names that are none of these."""
    by_id = {doc_id: uri for uri, entry in ledger.entries().items()
             for doc_id in (entry.doc_id, entry.indexed_doc_id) if doc_id}
    known = ledger.entries(under=inbox_uri)
    sources: list[str] = []
    unknown: list[str] = []
    for name in names:
        if name in by_id:
            sources.append(by_id[name])
            continue
        [uri] = key_uris(inbox_uri, [name])  # raises for a URI outside the inbox
        if uri in known or storage.exists(uri):
            sources.append(uri)
        else:
            unknown.append(uri)
    return sorted(set(sources)), unknown


def forget(dag_id: str, run_id: str, prune_result_uri: str) -> dict[str, Any]:
    """After the prune job: the ledger's rows and history, the names in the run folders, this run's
    own files that name the keys. Returns (and writes) the erasure report, keys redacted."""
    settings = get_control_settings()
    storage, ledger = Storage(settings), Ledger.open(settings)
    folder = run_folder(settings.artifacts_uri, dag_id, run_id)
    spec = PruneSpec.model_validate(storage.read_json(join_uri(folder, PRUNE_SPEC)))
    pruned = PruneResult.model_validate(storage.read_json(prune_result_uri))
    # The run folders first, the ledger after: a retry after a failure in between finds the same traces.
    runs, other_names = ledger.traces(spec.source_uris)
    names = sorted({*spec.source_uris, *other_names}, key=len, reverse=True)  # longest first: a URI before its id
    rewritten = sum(_scrub_folder(storage, run_folder(settings.artifacts_uri, dag, run), names) for dag, run in runs)
    rows, events = ledger.forget(spec.source_uris)
    report = {
        "documents": [{"source": shown(uri), "vectors_removed": pruned.removed.get(uri, 0),
                       "artifact_files_removed": pruned.files_removed.get(uri, 0)} for uri in spec.source_uris],
        "ledger_rows_removed": rows, "ledger_events_removed": events,
        "run_folders_scrubbed": len(runs), "run_files_rewritten": rewritten,
    }
    storage.write_json(join_uri(folder, REPORT), report)
    for uri in storage.list(folder):  # the spec and the job's result name the keys
        if not uri.endswith(REPORT):
            storage.delete(uri)
    return report


def _scrub_folder(storage: Storage, folder: str, names: list[str]) -> int:
    """Rewrite the folder's JSON, Markdown and HTML files that hold any of ``names``, and remove those
    named by one (the Data Docs page of the document's validation); how many were."""
    # JSON is parsed, so a name is found however the file escapes it; Markdown and HTML are plain text.
    text = (storage.read_text, storage.write_text)
    formats = {".json": (storage.read_json, storage.write_json), ".md": text, ".html": text}
    rewritten = 0
    for uri in storage.list(folder):
        if any(name in uri[len(folder):] for name in names):
            storage.delete(uri)
            rewritten += 1
            continue
        suffix = uri[uri.rfind("."):]
        if suffix not in formats:
            continue
        read, write = formats[suffix]
        before = read(uri)
        after = _scrub(before, names)
        if after != before:
            write(uri, after)
            rewritten += 1
    return rewritten


def _scrub(value: Any, names: list[str]) -> Any:
    if isinstance(value, str):
        for name in names:
            value = value.replace(name, ERASED)
        return value
    if isinstance(value, list):
        return [_scrub(item, names) for item in value]
    if isinstance(value, dict):
        return {_scrub(key, names): _scrub(item, names) for key, item in value.items()}
    return value


def report_lines(report: dict[str, Any]) -> list[str]:
    """The erasure report as the task log prints it."""
    lines = [f"ERASED {item['source']}: {item['vectors_removed']} vector(s), {item['artifact_files_removed']} "
             "artifact file(s)" for item in report["documents"]]
    lines.append(f"ledger: {report['ledger_rows_removed']} row(s), {report['ledger_events_removed']} event(s); "
                 f"{report['run_files_rewritten']} file(s) of {report['run_folders_scrubbed']} run folder(s) rewritten "
                 f"with {ERASED}")
    return lines

