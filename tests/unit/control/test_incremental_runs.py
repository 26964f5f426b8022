"""Runs of ``document_ingest`` one after another over a changing inbox, task by task in this
process (stages inline): what each run plans, what the ledger and the vector store hold after."""

from __future__ import annotations

import pytest

from include.backends.vector_stores import ChromaStore
from include.control import ingest
from include.control.ledger import Ledger, Status
from include.control.quarantine import NOTE_SUFFIX
from include.storage import Storage, join_uri
from tests.helpers import DAG_ID, ingest_like_the_dag

GOOD, OTHER = "metformin_trial_protocol.pdf", "site_operations_handbook.pdf"


def _doc_ids_in_store(settings) -> dict[str, set[str]]:
    stored = ChromaStore(settings)._collection.get(include=["metadatas"])
    found: dict[str, set[str]] = {}
    for meta in stored["metadatas"]:
        found.setdefault(meta["source_uri"], set()).add(meta["doc_id"])
    return found


def _artifact_versions(settings, key: str) -> set[str]:
    """The versions (doc ids) of an inbox key that still have an artifact in any stage's folder."""
    from include.documents import id_prefix
    from include.stages import STAGES

    storage, uri = Storage(settings), join_uri(settings.inbox_uri, key)
    found = set()
    for stage in STAGES.values():
        root = join_uri(settings.artifacts_uri, stage.output_dir)
        for info in storage.list_objects(join_uri(root, id_prefix(uri))):
            found.add(info.uri[len(root) + 1:].split("/", 1)[0])
    return found


def _plan(run_id: str, **options) -> dict:
    from include.control.batching import read_plan, run_folder
    from include.control.settings import get_control_settings

    settings = get_control_settings()
    ingest.plan_run(DAG_ID, run_id, **options)
    return read_plan(Storage(settings), run_folder(settings.artifacts_uri, DAG_ID, run_id)).model_dump()


@pytest.fixture
def inbox(pipeline_env, sample_pdfs):
    storage = Storage(pipeline_env)

    def put(key: str, data: bytes) -> str:
        uri = join_uri(pipeline_env.inbox_uri, key)
        storage.write_bytes(uri, data)
        return uri

    put.storage = storage
    return put


def test_runs_ingest_what_is_new_or_changed_only_and_keep_the_ledger_and_store_in_step(pipeline_env, inbox, sample_pdfs):
    settings, storage = pipeline_env, inbox.storage
    good = inbox("reports/Quartal Ü1.pdf", sample_pdfs[GOOD].read_bytes())
    bad = inbox("broken.pdf", b"%PDF-1.7\n1 0 obj << broken")

    first = ingest_like_the_dag("run-1")
    assert first["counts"] | {"new": 2, "ingested": 1, "quarantined": 1} == first["counts"]
    ledger = Ledger.open(settings)
    entries = ledger.entries()
    assert entries[good].status == Status.INGESTED and entries[good].vectors == first["stages"]["load"]["vectors"]
    # The bad file left the inbox for quarantine, with a note saying why.
    assert entries[bad].status == Status.QUARANTINED and not storage.exists(bad)
    note = storage.read_json(entries[bad].quarantine_uri + NOTE_SUFFIX)
    assert note["stage"] == "extract" and "corrupt" in note["error"] and note["run_id"] == "run-1"
    assert storage.exists(entries[bad].quarantine_uri)
    report = storage.read_text(first["report_uri"].replace("report.json", "report.md"))
    assert "| quarantined |" in report and "Quartal" in report

    # Nothing changed: nothing to do, no batch at all.
    second = _plan("run-2")
    assert second["batches"] == [] and second["unchanged"] == 1 and second["reasons"] == {}

    # Written again with the same bytes: its tag changed, so the extract job hashes it, finds the
    # bytes it ingested, and no later stage runs; the ledger keeps its version and vectors with
    # the new tag, so the sensor no longer sees work.
    before = ledger.entries()[good]
    inbox("reports/Quartal Ü1.pdf", sample_pdfs[GOOD].read_bytes())
    listing = storage.list_objects(settings.inbox_uri)
    assert ingest.pending(listing, ledger.entries(), fingerprint=ingest.pipeline_fingerprint(settings),
                          max_attempts=3).work
    touched = ingest_like_the_dag("run-3")
    assert touched["touched"] == [] and touched["counts"]["unchanged"] == 1 and touched["failed"] == []
    assert touched["stages"]["extract"]["documents"] == 0 and touched["stages"]["chunk"]["batches"] == 0
    after = ledger.entries()[good]
    assert (after.doc_id, after.indexed_doc_id, after.content_sha256, after.vectors) == (
        before.doc_id, before.indexed_doc_id, before.content_sha256, before.vectors)
    assert after.object_version != before.object_version and after.status == Status.INGESTED
    assert _doc_ids_in_store(settings)[good] == {before.doc_id}
    assert not ingest.pending(listing, ledger.entries(), fingerprint=ingest.pipeline_fingerprint(settings),
                              max_attempts=3)

    # Changed bytes under the same key, and the bad key fixed: only those two are processed.
    old_doc = entries[good].doc_id
    inbox("reports/Quartal Ü1.pdf", sample_pdfs[OTHER].read_bytes())
    inbox("broken.pdf", sample_pdfs[GOOD].read_bytes())
    third = ingest_like_the_dag("run-4")
    assert {row["source_uri"]: row["reason"] for row in third["touched"]} == {good: "changed", bad: "changed"}
    entries = ledger.entries()
    assert entries[good].status == entries[bad].status == Status.INGESTED
    in_store = _doc_ids_in_store(settings)
    assert in_store[good] == {entries[good].doc_id} != {old_doc}  # the old version's vectors are gone
    assert _artifact_versions(settings, "reports/Quartal Ü1.pdf") == {entries[good].doc_id}  # and its artifacts

    # Deleted from the inbox: its vectors go, the ledger says deleted.
    storage.delete(good)
    fourth = ingest_like_the_dag("run-5")
    assert fourth["deleted"] == [good] and fourth["touched"] == []
    assert good not in _doc_ids_in_store(settings) and ledger.entries()[good].status == Status.DELETED
    assert _artifact_versions(settings, "reports/Quartal Ü1.pdf") == set()
    assert _artifact_versions(settings, "broken.pdf") == {ledger.entries()[bad].doc_id}  # another source's stay
    assert [e.event for e in ledger.history(good)][-1] == "deleted"

    # Reprocess on request: every stage redone for the named key, nothing reused.
    fifth = ingest_like_the_dag("run-6", keys=["broken.pdf"], reprocess=True)
    assert [row["reason"] for row in fifth["touched"]] == ["reprocess"]
    assert all(t.get("reused", 0) == 0 for t in fifth["stages"].values())
    runs = {run["run_id"]: run for run in ledger.runs()}
    assert (runs["run-1"]["new"], runs["run-1"]["quarantined"], runs["run-5"]["deleted"]) == (2, 1, 1)
    assert (runs["run-3"]["changed"], runs["run-3"]["unchanged"]) == (0, 1)  # settled by the extract job


def test_a_new_pipeline_fingerprint_makes_ingested_documents_stale_and_reuses_what_still_holds(
        pipeline_env, inbox, sample_pdfs, monkeypatch):
    from include.control.settings import reload_settings

    inbox(GOOD, sample_pdfs[GOOD].read_bytes())
    ingest_like_the_dag("run-1")
    monkeypatch.setenv("PIPELINE_CHUNK_MAX_TOKENS", "96")
    reload_settings()
    again = ingest_like_the_dag("run-2")
    assert [row["reason"] for row in again["touched"]] == ["stale"]
    assert again["stages"]["extract"]["reused"] == 1 and "reused" not in again["stages"]["chunk"]


def test_a_file_replaced_after_planning_is_not_quarantined_by_mistake(pipeline_env, inbox, sample_pdfs):
    from include.control.quarantine import quarantine
    from include.documents import describe

    uri = inbox("late.pdf", b"not a pdf")
    storage = inbox.storage
    document = describe(storage, uri)  # as planned: the listed version
    inbox("late.pdf", sample_pdfs[GOOD].read_bytes())  # the fixed file lands before the summary runs
    moved = quarantine(pipeline_env, storage, document, stage="extract", error="not a PDF", dag_id=DAG_ID,
                       run_id="r")
    assert moved is None and storage.exists(uri)


def test_a_file_uploaded_while_its_bad_version_is_quarantined_stays_in_the_inbox(pipeline_env, inbox, sample_pdfs,
                                                                                 monkeypatch):
    from include.control.quarantine import quarantine
    from include.documents import describe
    from include.storage import LocalBackend

    uri = inbox("racing.pdf", b"not a pdf")
    document = describe(inbox.storage, uri)
    fixed = sample_pdfs[GOOD].read_bytes()
    real_copy = LocalBackend.copy

    def copy_then_upload(self, source_uri, target_uri, if_version=None):
        real_copy(self, source_uri, target_uri, if_version)
        inbox("racing.pdf", fixed)  # the user's fixed file lands between the copy and the delete

    monkeypatch.setattr(LocalBackend, "copy", copy_then_upload)
    moved = quarantine(pipeline_env, inbox.storage, document, stage="extract", error="not a PDF", dag_id=DAG_ID,
                       run_id="r")
    assert inbox.storage.read_bytes(moved) == b"not a pdf"  # the bad version, with its note
    assert inbox.storage.exists(moved + NOTE_SUFFIX)
    assert inbox.storage.read_bytes(uri) == fixed  # the new upload was not deleted


def test_reconcile_trusts_no_listing_alone_and_removes_no_more_than_its_share(pipeline_env, inbox, sample_pdfs,
                                                                              monkeypatch):
    from include.control.settings import reload_settings

    monkeypatch.setenv("PIPELINE_DELETE_GUARD_MIN_DOCUMENTS", "1")  # the 25% share decides, even for 3
    reload_settings()
    uris = [inbox(name, path.read_bytes()) for name, path in sorted(sample_pdfs.items())]
    ingest_like_the_dag("run-1")
    storage, ledger = inbox.storage, Ledger.open(pipeline_env)

    # A listing that pages short (or lags): two documents missing from it, but a HEAD finds them.
    real_list = Storage.list_objects
    monkeypatch.setattr(Storage, "list_objects", lambda self, prefix: real_list(self, prefix)[:1])
    short = ingest_like_the_dag("run-2")
    assert short["deleted"] == [] and sorted(short["still_there"]) == sorted(uris[1:])
    monkeypatch.setattr(Storage, "list_objects", real_list)

    # Two of three really gone: more than a run may remove; none is, and the report says why.
    for uri in uris[1:]:
        storage.delete(uri)
    held = ingest_like_the_dag("run-3")
    assert held["deleted"] == [] and sorted(held["deletions_held"]) == sorted(uris[1:])
    assert "2 of the 3 indexed documents are gone" in held["deletions_held_reason"]
    assert '{"allow_mass_delete": true}' in storage.read_text(held["report_uri"].replace("report.json", "report.md"))
    assert {uri for uri, ids in _doc_ids_in_store(pipeline_env).items() if ids} == set(uris)
    assert all(ledger.entries()[uri].status == Status.INGESTED for uri in uris)

    # The conf says it was on purpose: both go.
    allowed = ingest_like_the_dag("run-4", allow_mass_delete=True)
    assert sorted(allowed["deleted"]) == sorted(uris[1:])
    assert set(_doc_ids_in_store(pipeline_env)) == {uris[0]}

    # The last document, deleted: one is within the floor, so an emptied inbox reconciles.
    storage.delete(uris[0])
    emptied = ingest_like_the_dag("run-5")
    assert emptied["deleted"] == [uris[0]] and _doc_ids_in_store(pipeline_env) == {}
    assert ledger.entries()[uris[0]].status == Status.DELETED
