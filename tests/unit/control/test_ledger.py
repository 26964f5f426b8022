"""The ledger on its own: schema migrations, claims under contention, idempotent records,
and what ``decide`` makes of each state a document can be in."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect

from include.contract import DocumentOutcome, DocumentRef
from include.control.incremental import Reason, decide, pending
from include.control.ledger import Entry, Final, Ledger, Status
from include.documents import document_id
from include.storage import ObjectInfo

INBOX = "s3://documents/inbox/"
HEAD_REVISION = "0004"  # the newest migration under include/control/ledger/migrations/versions


def _candidate(name: str, version: str = "e1") -> DocumentRef:
    uri = f"{INBOX}{name}"
    return DocumentRef(doc_id=document_id(uri, version), source_uri=uri, size_bytes=10, object_version=version)


def _ledger(tmp_path) -> Ledger:
    from include.control.ledger.store import default_url
    from include.control.settings import ControlSettings

    settings = ControlSettings(work_dir=tmp_path)
    Ledger(default_url(settings)).upgrade()
    return Ledger.open(settings)


def test_upgrading_is_a_deploy_step_a_ledger_not_upgraded_is_refused_naming_the_command(tmp_path):
    from include.control.ledger import LedgerNotUpgraded
    from include.control.settings import ControlSettings

    settings = ControlSettings(work_dir=tmp_path)
    with pytest.raises(LedgerNotUpgraded, match=r"revision none \(empty\), this code needs 0004: run "
                                                 r"`python -m include.control.ledger upgrade`"):
        Ledger.open(settings)
    ledger = _ledger(tmp_path)
    assert ledger.revision() == HEAD_REVISION
    tables = set(inspect(ledger._engine).get_table_names())
    assert {"documents", "document_events", "runs", "alembic_version"} <= tables
    assert "daily_metrics" in inspect(ledger._engine).get_view_names()
    assert ledger.upgrade() == HEAD_REVISION and Ledger.open(settings).counts() == {}


def test_the_upgrades_keep_every_row_two_dags_may_share_a_run_id_and_a_failure_has_its_cause(tmp_path):
    assert_upgrade_keeps_rows(f"sqlite:///{tmp_path / 'ledger.sqlite'}")


def assert_upgrade_keeps_rows(url: str) -> None:
    """A ledger at 0002 with a document and a run, upgraded: both kept, then a 3 GiB size and a second
    DAG's run of the same id fit."""
    from alembic import command
    from sqlalchemy import text

    from include.control.ledger.store import _alembic_config

    ledger = Ledger(url)
    with ledger._engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    with ledger._engine.begin() as connection:  # the old code's tables, written as it would
        connection.execute(text(
            "INSERT INTO documents (source_uri, doc_id, size_bytes, status, pipeline_fingerprint, attempts, "
            "claim_dag_id, claim_run_id, claimed_at, first_seen, last_seen, updated_at) VALUES (:uri, 'old', 1, "
            "'processing', 'fp', 0, 'document_ingest', 'run-1', :at, :at, :at, :at)"),
            {"uri": f"{INBOX}old.pdf", "at": datetime.now(UTC)})
        counts = ", ".join(["0"] * 13)
        connection.execute(text(
            "INSERT INTO runs (run_id, dag_id, planned_at, new, changed, stale, retried, reprocessed, unchanged, "
            f"deleted, ingested, failed, quarantined, pages, chunks, vectors) VALUES ('run-1', 'document_ingest', "
            f":at, {counts})"), {"at": datetime.now(UTC)})
    assert ledger.upgrade() == HEAD_REVISION
    assert [run["run_id"] for run in ledger.runs()] == ["run-1"]
    assert ledger.entries()[f"{INBOX}old.pdf"].claim_run_id == "run-1"
    three_gib = DocumentRef(doc_id="big", source_uri=f"{INBOX}big.pdf", size_bytes=3 * 2**30, object_version="e")
    ledger.claim("document_ingest", "run-2", [three_gib], "fp", is_active=lambda *_: True)
    assert ledger.entries()[three_gib.source_uri].size_bytes == 3 * 2**30
    # 0004: why a document failed, kept and filtered on.
    assert ledger.entries()[f"{INBOX}old.pdf"].error_cause is None
    ledger.record_stage("run-2", "chunk", [DocumentOutcome(doc_id="big", source_uri=three_gib.source_uri,
                                                           status="failed", error="gate", cause="quality_gate")], None)
    assert list(ledger.entries(cause="quality_gate")) == [three_gib.source_uri]
    ledger.start_run("document_ingest_interval", "run-1", {"new": 2})  # another DAG, the same run id
    ledger.finish_run("document_ingest_interval", "run-1", {"ingested": 2})
    runs = {(run["dag_id"], run["run_id"]): run for run in ledger.runs()}
    assert set(runs) == {("document_ingest", "run-1"), ("document_ingest_interval", "run-1")}
    assert runs[("document_ingest_interval", "run-1")]["ingested"] == 2


def _claim_all(url: str, run_id: str, names: list[str], queue) -> None:
    ledger = Ledger(url)
    claimed, _ = ledger.claim("document_ingest", run_id, [_candidate(n) for n in names], "fp",
                              is_active=lambda *_: True)
    queue.put((run_id, sorted(c.source_uri for c in claimed)))


def test_two_processes_racing_for_the_same_documents_never_both_get_one(tmp_path):
    ledger = _ledger(tmp_path)
    names = [f"doc-{n:03d}.pdf" for n in range(60)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    racers = [context.Process(target=_claim_all, args=(ledger.url, f"run-{n}", names, queue)) for n in range(2)]
    for racer in racers:
        racer.start()
    results = dict(queue.get(timeout=120) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
    first, second = results.values()
    assert not set(first) & set(second)
    assert sorted(first + second) == [f"{INBOX}{n}" for n in names]
    holders = {e.claim_run_id for e in ledger.entries().values()}
    assert holders <= set(results)


def test_a_live_runs_claim_is_held_a_dead_runs_is_taken_over_and_a_retry_keeps_its_own(tmp_path):
    ledger = _ledger(tmp_path)
    docs = [_candidate("a.pdf"), _candidate("b.pdf")]
    claimed, held = ledger.claim("dag", "run-1", docs, "fp", is_active=lambda *_: True)
    assert len(claimed) == 2 and held == {}

    claimed, held = ledger.claim("dag", "run-2", docs, "fp", is_active=lambda dag, run: run == "run-1")
    assert claimed == [] and held == {d.source_uri: "run-1" for d in docs}
    # run-1's planning task is retried: it finds its own claims.
    claimed, _ = ledger.claim("dag", "run-1", docs, "fp", is_active=lambda *_: True)
    assert len(claimed) == 2
    # run-1 died: run-2 takes over.
    claimed, held = ledger.claim("dag", "run-2", docs, "fp", is_active=lambda dag, run: False)
    assert len(claimed) == 2 and held == {}
    assert {e.claim_run_id for e in ledger.entries().values()} == {"run-2"}
    # The dead run's late outcome does not overwrite the new holder's row.
    ledger.finish("run-1", [Final(d, Status.INGESTED) for d in docs])
    assert {e.status for e in ledger.entries().values()} == {Status.PROCESSING}


def test_a_stage_recorded_twice_by_a_retried_task_is_one_event(tmp_path):
    assert_one_history_for_a_retried_stage(_ledger(tmp_path))


def assert_one_history_for_a_retried_stage(ledger: Ledger) -> None:
    """Claim, a stage recorded twice (a retried task), finish: each event once. Shared with PostgreSQL's tests."""
    [doc] = ledger.claim("dag", "run-1", [_candidate("a.pdf")], "fp", is_active=lambda *_: True)[0]
    outcome = DocumentOutcome(doc_id=doc.doc_id, source_uri=doc.source_uri, status="succeeded",
                              manifest_uri="s3://x/_manifest.json", metrics={"pages": 3.0})
    for _ in range(2):
        ledger.record_stage("run-1", "extract", [outcome], "job-1")
    hashed = doc.model_copy(update={"content_sha256": "f" * 64})
    ledger.finish("run-1", [Final(hashed, Status.INGESTED, "load", counts={"pages": 3})])
    events = [(e.stage, e.event) for e in ledger.history(doc.source_uri)]
    assert events == [("plan", "claimed"), ("extract", "succeeded"), ("finish", "ingested")]
    entry = ledger.entries()[doc.source_uri]
    assert (entry.status, entry.pages, entry.attempts, entry.claim_run_id) == (Status.INGESTED, 3, 1, None)
    assert entry.indexed_doc_id == doc.doc_id and entry.content_sha256 == "f" * 64


def _entry(**changes) -> Entry:
    stamp = datetime.now(UTC)
    base = dict(source_uri=f"{INBOX}a.pdf", doc_id="a-1", content_sha256="v1", size_bytes=10, object_version="e1",
                status=Status.INGESTED, pipeline_fingerprint="fp", stage_reached="load", pages=1, chunks=1,
                vectors=1, indexed_doc_id="a-1", error=None, error_stage=None, quarantine_uri=None, attempts=1,
                claim_dag_id=None, claim_run_id=None, claimed_at=None, first_seen=stamp, last_seen=stamp,
                last_run_id="r")
    return Entry(**{**base, **changes})


@pytest.mark.parametrize(
    ("entry", "same_bytes", "expected"),
    [
        (None, False, Reason.NEW),
        (_entry(status=Status.DELETED), True, Reason.NEW),
        (_entry(), False, Reason.CHANGED),
        (_entry(), True, Reason.UNCHANGED),
        (_entry(pipeline_fingerprint="older"), True, Reason.STALE),
        (_entry(status=Status.FAILED, attempts=1), True, Reason.RETRY),
        (_entry(status=Status.FAILED, attempts=3), True, Reason.GAVE_UP),
        (_entry(status=Status.FAILED, attempts=3), False, Reason.CHANGED),
        (_entry(status=Status.QUARANTINED), True, Reason.RETRY),
        (_entry(status=Status.QUARANTINED), False, Reason.CHANGED),
        (_entry(status=Status.PROCESSING, claim_run_id="other"), True, Reason.RETRY),
    ],
)
def test_decide(entry, same_bytes, expected):
    assert decide(entry, same_bytes=same_bytes, fingerprint="fp", max_attempts=3) == expected


def test_pending_settles_what_the_listing_can_and_flags_the_rest_as_work():
    entries = {
        f"{INBOX}same.pdf": _entry(source_uri=f"{INBOX}same.pdf"),
        f"{INBOX}touched.pdf": _entry(source_uri=f"{INBOX}touched.pdf"),
        f"{INBOX}gone.pdf": _entry(source_uri=f"{INBOX}gone.pdf"),
        f"{INBOX}quarantined.pdf": _entry(source_uri=f"{INBOX}quarantined.pdf", status=Status.QUARANTINED,
                                          indexed_doc_id=None),
        # Quarantined, but the prune job has not removed its older version's vectors yet.
        f"{INBOX}unpruned.pdf": _entry(source_uri=f"{INBOX}unpruned.pdf", status=Status.QUARANTINED),
    }
    listing = [ObjectInfo(f"{INBOX}same.pdf", 10, "e1"), ObjectInfo(f"{INBOX}touched.pdf", 10, "e2"),
               ObjectInfo(f"{INBOX}new.pdf", 5, "e9")]
    found = pending(listing, entries, fingerprint="fp", max_attempts=3)
    assert [i.uri for i in found.work] == [f"{INBOX}touched.pdf", f"{INBOX}new.pdf"]
    # A quarantined file left on purpose; one whose vectors are still in the store is pruned again.
    assert found.unchanged == 1 and found.deleted == [f"{INBOX}gone.pdf", f"{INBOX}unpruned.pdf"]
    assert not pending(listing[:1], entries, fingerprint="fp", max_attempts=3, whole_inbox=False)
    assert [i.uri for i in pending(listing[:1], entries, fingerprint="fp", max_attempts=3, reprocess=True).work] == [
        f"{INBOX}same.pdf"]
