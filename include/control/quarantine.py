"""Quarantine: a bad file leaves the inbox for ``<quarantine_uri>/<its key>``, with a note beside it.

The note (``<key>.quarantine.json``) says why (the cause, the stage), when, and which run
moved it. The file is copied, then deleted from the inbox: it is never absent from both.
Both are conditional on the version planned (S3's ``CopySourceIfMatch`` and ``If-Match``
delete), so a file replaced since it was planned is left alone (the next run ingests the
new version), and one uploaded between the copy and the delete is never deleted: a fixed
file dropped meanwhile is never moved or lost by mistake. Dropping a fixed
file under the same key ingests it: its bytes are a new version.
"""

from __future__ import annotations

import logging
from typing import Any

from include.contract import DocumentRef, now
from include.settings import PipelineSettings
from include.storage import ObjectNotFound, Storage, VersionChanged, join_uri, relative_key

log = logging.getLogger(__name__)

NOTE_SUFFIX = ".quarantine.json"


def quarantine(
    settings: PipelineSettings,
    storage: Storage,
    document: DocumentRef,
    *,
    stage: str,
    error: str,
    dag_id: str,
    run_id: str,
) -> str | None:
    """Move a bad file out of the inbox; its quarantine URI, or None if it was replaced or is gone."""
    source = document.source_uri
    target = join_uri(settings.quarantine_uri, relative_key(settings.inbox_uri, source))
    try:
        current = storage.stat(source)
    except ObjectNotFound:
        if _moved_by(storage, target, document, run_id):
            return target  # a retried summary: this run moved it already
        log.warning("%s: gone from the inbox already; nothing to quarantine", source)
        return None
    if document.object_version is not None and current.version != document.object_version:
        log.warning("%s: replaced since this run planned it; the next run ingests the new file", source)
        return None
    note: dict[str, Any] = {
        "source_uri": source, "quarantine_uri": target, "doc_id": document.doc_id,
        "content_sha256": document.content_sha256, "size_bytes": document.size_bytes,
        "stage": stage, "error": error, "dag_id": dag_id, "run_id": run_id, "at": now().isoformat(),
        "to_retry": "fix the file and drop it into the inbox again under the same key",
    }
    note_uri = target + NOTE_SUFFIX
    earlier_note = storage.read_json(note_uri) if storage.exists(note_uri) else None  # an older version's
    storage.write_json(note_uri, note)  # first: a retried summary finds what this run moved
    try:
        removed = storage.move(source, target, if_version=document.object_version)
    except VersionChanged:
        if earlier_note is None:
            storage.delete(note_uri)
        else:
            storage.write_json(note_uri, earlier_note)
        log.warning("%s: replaced while it was being quarantined; the next run ingests the new file", source)
        return None
    if removed:
        log.warning("QUARANTINED %s -> %s: %s", source, target, error)
    else:
        log.warning("QUARANTINED %s -> %s: %s; a new file uploaded under its key meanwhile stays in the inbox "
                    "(the next run ingests it)", source, target, error)
    return target


def _moved_by(storage: Storage, target: str, document: DocumentRef, run_id: str) -> bool:
    note_uri = target + NOTE_SUFFIX
    if not storage.exists(note_uri):
        return False
    note = storage.read_json(note_uri)
    return note.get("run_id") == run_id and note.get("doc_id") == document.doc_id and storage.exists(target)
