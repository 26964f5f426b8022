"""Retention of the unredacted artifacts: once an ingested version is older than
``PIPELINE_UNREDACTED_RETENTION_DAYS``, the sensor counts that as work (the inbox may be unchanged), and the
run's prune job removes its extracted/ and chunks/ folders; the redacted artifacts and the vectors stay, and
a reprocess extracts again. Stages inline, an embedded Chroma."""

from __future__ import annotations

from include.backends.vector_stores import ChromaStore
from include.control import ingest
from include.control.ledger import Final, Ledger, Status
from include.control.settings import reload_settings
from include.storage import Storage, join_uri
from tests.helpers import DAG_ID, ingest_like_the_dag
from tests.unit.control.test_inbox import S3

GOOD = "metformin_trial_protocol.pdf"


def _folder_files(settings, storage: Storage, output_dir: str, doc_id: str) -> list[str]:
    return storage.list(join_uri(settings.artifacts_uri, output_dir, doc_id) + "/")


def test_an_unchanged_inbox_is_work_once_an_ingested_version_is_past_its_retention(pipeline_env, monkeypatch):
    from include.contract import DocumentRef

    s3 = pipeline_env.model_copy(update={"inbox_uri": S3.inbox_uri, "quarantine_uri": S3.quarantine_uri})
    monkeypatch.setattr(ingest, "get_control_settings", lambda: s3)
    kept = DocumentRef(doc_id="kept-1", source_uri=f"{S3.inbox_uri}kept.pdf", size_bytes=8, object_version="e1")
    ledger = Ledger.open(s3)
    ledger.claim(DAG_ID, "run-1", [kept], "fp", is_active=lambda *_: True)
    ledger.finish("run-1", [Final(kept, Status.INGESTED, stage_reached="load")])
    listing = [{"Key": "inbox/kept.pdf", "Size": 8, "ETag": '"e1"'}]
    monkeypatch.setattr(ingest, "pipeline_fingerprint", lambda settings: "fp")
    assert not ingest.inbox_has_work(listing)  # unchanged, and ingested just now
    monkeypatch.setattr(ingest, "get_control_settings", lambda: s3.model_copy(update={"unredacted_retention_days": 0}))
    assert ingest.inbox_has_work(listing)
    monkeypatch.setattr(ingest, "get_control_settings",
                        lambda: s3.model_copy(update={"unredacted_retention_days": None}))
    assert not ingest.inbox_has_work(listing)  # kept for as long as the document


def test_the_prune_job_removes_the_unredacted_artifacts_past_retention_and_nothing_else(pipeline_env, sample_pdfs,
                                                                                     monkeypatch):
    settings, storage = pipeline_env, Storage(pipeline_env)
    uri = join_uri(settings.inbox_uri, GOOD)
    storage.write_bytes(uri, sample_pdfs[GOOD].read_bytes())
    ingest_like_the_dag("run-1")
    ledger = Ledger.open(settings)
    doc_id = ledger.entries()[uri].indexed_doc_id
    vectors = ChromaStore(settings).count(doc_id)
    assert ingest.unredacted_due(settings, ledger) == []
    assert _folder_files(settings, storage, "extracted", doc_id) and _folder_files(settings, storage, "chunks", doc_id)

    monkeypatch.setenv("PIPELINE_UNREDACTED_RETENTION_DAYS", "0")
    reload_settings()
    settings = ingest.get_control_settings()
    assert ingest.unredacted_due(settings, ledger) == [doc_id]
    summary = ingest_like_the_dag("run-2")  # nothing to ingest: the prune job alone
    assert summary["documents"] == 0
    assert _folder_files(settings, storage, "extracted", doc_id) == []
    assert _folder_files(settings, storage, "chunks", doc_id) == []
    assert _folder_files(settings, storage, "enriched", doc_id) and _folder_files(settings, storage, "embeddings", doc_id)
    assert ChromaStore(settings).count(doc_id) == vectors
    assert [e.event for e in ledger.history(uri)][-1] == "expired"
    assert ingest.unredacted_due(settings, ledger) == []  # expired once, not again

    again = ingest_like_the_dag("run-3", reprocess=True)  # needs the text again: extracted again
    assert again["succeeded"] == 1 and again["stages"]["extract"].get("reused", 0) == 0
    assert ingest.unredacted_due(settings, ledger) == [doc_id]  # a new ingest starts a new retention
