"""Erasure: every trace of a document goes (vectors, every version's artifacts, the inbox object, the
quarantine's copy and note, the ledger's row and history, its key and ids in the run folders), the report
says what went with each key redacted, and the other documents keep everything. Stages inline, an
embedded Chroma, the DAG's three steps called as its tasks call them."""

from __future__ import annotations

import pytest

from include.backends.vector_stores import ChromaStore
from include.control import erasure, ingest
from include.control.ledger import Ledger
from include.control.quarantine import NOTE_SUFFIX
from include.storage import Storage, join_uri
from tests.helpers import ingest_like_the_dag

GOOD, OTHER = "metformin_trial_protocol.pdf", "site_operations_handbook.pdf"
DAG_ID = "document_erase"


def _erase_like_the_dag(run_id: str, names: list[str], is_active=lambda dag_id, run_id: True) -> dict:
    from include.contract import PruneSpec
    from include.prune import prune

    settings = ingest.get_control_settings()
    storage = Storage(settings)
    erasure.plan_erasure(DAG_ID, run_id, names, is_active=is_active)
    spec = ingest.prune_spec_uri(DAG_ID, run_id)
    result = prune(PruneSpec.model_validate(storage.read_json(spec)))
    result_uri = join_uri(spec.rsplit("/", 1)[0], "prune", "inline.json")
    storage.write_json(result_uri, result.model_dump(mode="json"))
    ingest.record_prune(run_id, result)
    return erasure.forget(DAG_ID, run_id, result_uri)


def _everything(storage: Storage, settings) -> dict[str, str]:
    """Every JSON, Markdown and JSON-lines file of the artifacts (run folders, stage outputs), by URI."""
    return {uri: storage.read_text(uri) for uri in storage.list(settings.artifacts_uri)
            if uri.endswith((".json", ".md", ".jsonl"))}


def test_erase_removes_every_trace_of_the_documents_named_and_nothing_else(pipeline_env, sample_pdfs):
    settings, storage = pipeline_env, Storage(pipeline_env)
    pii_key = join_uri(settings.inbox_uri, "W9_536-22-8471_signed.pdf")
    kept = join_uri(settings.inbox_uri, OTHER)
    bad = join_uri(settings.inbox_uri, "broken 536-22-8471.pdf")
    storage.write_bytes(pii_key, sample_pdfs[GOOD].read_bytes())
    storage.write_bytes(kept, sample_pdfs[OTHER].read_bytes())
    storage.write_bytes(bad, b"%PDF-1.7\n1 0 obj << broken")
    ingest_like_the_dag("run-1")
    storage.write_bytes(pii_key, sample_pdfs[GOOD].read_bytes() + b"\n% a second version\n")
    ingest_like_the_dag("run-2")  # a second version: two versions' artifacts and history
    ledger = Ledger.open(settings)
    entries = ledger.entries()
    quarantined = entries[bad].quarantine_uri
    assert storage.exists(quarantined)
    doc_ids = {event.doc_id for event in ledger.history(pii_key)}
    assert len(doc_ids) == 2
    store = ChromaStore(settings)
    kept_vectors = store.count(entries[kept].indexed_doc_id)

    # By a document id for one (no key in the run's conf), by its key for the other.
    report = _erase_like_the_dag("erase-1", [entries[pii_key].indexed_doc_id, "broken 536-22-8471.pdf"])

    assert not storage.exists(pii_key) and not storage.exists(quarantined)
    assert not storage.exists(quarantined + NOTE_SUFFIX)
    assert all(store.count(doc_id) == 0 for doc_id in doc_ids)
    assert store.count(entries[kept].indexed_doc_id) == kept_vectors > 0
    assert set(ledger.entries()) == {kept} and ledger.history(pii_key) == [] and ledger.history(bad) == []
    for uri, text in _everything(storage, settings).items():
        for trace in (pii_key, bad, "536-22-8471", *doc_ids):
            assert trace not in text and trace not in uri, (trace, uri)
    assert any(OTHER in text for text in _everything(storage, settings).values())  # the rest stays

    documents = {item["source"]: item for item in report["documents"]}
    assert set(documents) == {settings.inbox_uri + "W9_[REDACTED:SSN]_signed.pdf",
                              settings.inbox_uri + "broken [REDACTED:SSN].pdf"}
    assert documents[settings.inbox_uri + "W9_[REDACTED:SSN]_signed.pdf"]["vectors_removed"] > 0
    assert report["ledger_rows_removed"] == 2 and report["ledger_events_removed"] > 0
    assert report["run_folders_scrubbed"] == 2 and report["run_files_rewritten"] > 0
    assert ingest_like_the_dag("run-3")["documents"] == 0  # nothing comes back


def test_an_erasure_of_a_document_in_processing_or_unknown_erases_nothing(pipeline_env, sample_pdfs):
    settings, storage = pipeline_env, Storage(pipeline_env)
    uri = join_uri(settings.inbox_uri, GOOD)
    storage.write_bytes(uri, sample_pdfs[GOOD].read_bytes())
    ingest.plan_run("document_ingest", "ingesting", None)  # claimed by a run that is still running
    with pytest.raises(erasure.ErasureHeld, match="is being processed by run ingesting"):
        erasure.plan_erasure(DAG_ID, "erase-2", [GOOD], is_active=lambda dag_id, run_id: True)
    assert storage.exists(uri) and not storage.exists(ingest.prune_spec_uri(DAG_ID, "erase-2"))
    with pytest.raises(erasure.NothingToErase, match=r"inbox/\[REDACTED:SSN\]\.pdf"):
        erasure.plan_erasure(DAG_ID, "erase-3", ["536-22-8471.pdf"], is_active=lambda dag_id, run_id: True)
