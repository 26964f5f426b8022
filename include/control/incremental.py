"""What a run has to do: the inbox as listed, compared with the ledger.

An object is work when it is new, changed (other bytes), stale (ingested under another
pipeline fingerprint), or failed in an earlier run with attempts left; or when a person
asks to reprocess it. An object whose size and version tag (S3's ETag, a file's mtime)
match the ledger is unchanged without reading it; when only the tag differs, the extract
job's hash decides (the same bytes are unchanged). A document the ledger holds that is
no longer in the inbox is to be deleted.

Both the sensor and the planner decide with ``decide``, from listings alone: neither
reads an object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from include.control.ledger import Entry, Status
from include.storage import ObjectInfo


class Reason(StrEnum):
    NEW = "new"
    CHANGED = "changed"
    STALE = "stale"
    RETRY = "retry"
    REPROCESS = "reprocess"
    UNCHANGED = "unchanged"
    # Failed max_attempts times, or its output failed a quality gate under the pipeline of now (the same
    # pipeline would fail it the same way): waits for a changed file (or pipeline) or a reprocess.
    GAVE_UP = "gave_up"


# The cause of a failure the same pipeline repeats (``include.stages.base.QualityGateFailed``).
QUALITY_GATE = "quality_gate"
WORK = frozenset({Reason.NEW, Reason.CHANGED, Reason.STALE, Reason.RETRY, Reason.REPROCESS})
# How the ledger's runs and the run report count the documents processed for each reason.
COUNTED_AS = {Reason.NEW: "new", Reason.CHANGED: "changed", Reason.STALE: "stale", Reason.RETRY: "retried",
              Reason.REPROCESS: "reprocessed"}


def tally(reasons: list[str]) -> dict[str, int]:
    """Documents per count name (``COUNTED_AS``), every name present."""
    counts = dict.fromkeys(COUNTED_AS.values(), 0)
    for reason in reasons:
        counts[COUNTED_AS[Reason(reason)]] += 1
    return counts


def same_listing(info: ObjectInfo, entry: Entry | None) -> bool:
    """The ledger's version of this object is the one listed, by size and version tag alone."""
    return (
        entry is not None and entry.status != Status.DELETED
        and entry.size_bytes == info.size and entry.object_version == info.version
    )


def decide(entry: Entry | None, *, same_bytes: bool, fingerprint: str, max_attempts: int) -> Reason:
    """Why (or whether) to process an object of the inbox, given what the ledger says of it."""
    if entry is None or entry.status == Status.DELETED:
        return Reason.NEW
    if not same_bytes:
        return Reason.CHANGED
    if entry.status == Status.INGESTED:
        return Reason.UNCHANGED if entry.pipeline_fingerprint == fingerprint else Reason.STALE
    if entry.status == Status.FAILED and entry.error_cause == QUALITY_GATE:
        return Reason.GAVE_UP if entry.pipeline_fingerprint == fingerprint else Reason.RETRY
    if entry.status == Status.FAILED and entry.attempts >= max_attempts:
        return Reason.GAVE_UP
    # Failed with attempts left; quarantined but put back in the inbox by someone; or
    # claimed by a run (the claim decides whether that run still holds it).
    return Reason.RETRY


@dataclass
class Pending:
    """What the listing alone tells: objects that are (or may be) work, and documents gone."""

    work: list[ObjectInfo] = field(default_factory=list)
    # Why each of the work is work (URI -> reason).
    reasons: dict[str, Reason] = field(default_factory=dict)
    unchanged: int = 0
    gave_up: int = 0
    deleted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.work or self.deleted)

    def describe(self) -> str:
        return (f"{len(self.work)} new or changed, {len(self.deleted)} deleted, {self.unchanged} unchanged, "
                f"{self.gave_up} given up after repeated failures")


def pending(listing: Iterable[ObjectInfo], entries: dict[str, Entry], *, fingerprint: str,
            max_attempts: int, reprocess: bool = False, whole_inbox: bool = True) -> Pending:
    """Compare a listing with the ledger's rows of the same objects, reading no object.

    An object whose tag changed counts as work here: the planner hashes it and may still
    find it unchanged (a file copied over itself). ``whole_inbox``: the listing is the
    entire inbox, so a ledger row missing from it is a deleted document.
    """
    result = Pending()
    listed = set()
    for info in listing:
        listed.add(info.uri)
        entry = entries.get(info.uri)
        same = same_listing(info, entry)
        reason = Reason.REPROCESS if reprocess else decide(
            entry, same_bytes=same, fingerprint=fingerprint, max_attempts=max_attempts)
        if reason in WORK:
            result.work.append(info)
            result.reasons[info.uri] = reason
        elif reason == Reason.GAVE_UP:
            result.gave_up += 1
        else:
            result.unchanged += 1
    if whole_inbox:
        result.deleted = [uri for uri, entry in entries.items() if uri not in listed and indexed_or_failed(entry)]
    return result


def indexed_or_failed(entry: Entry) -> bool:
    """A row whose object going away is news: it may have vectors in the store (a quarantined
    source has, until its prune job has run)."""
    return (entry.status in (Status.INGESTED, Status.FAILED, Status.POSTPONED, Status.PROCESSING)
            or entry.indexed_doc_id is not None)
