"""Runs of ``document_ingest`` in this process (stages inline) where something breaks: what one document
causes fails that document alone and counts as its attempt; an outage of the infrastructure fails the job
and never counts against the documents it held up."""

from __future__ import annotations

from include.control.incremental import Reason
from include.control.ledger import Ledger, Status
from include.stages import STAGES
from include.storage import Storage, join_uri
from tests.helpers import ingest_like_the_dag

GOOD, OTHER = "metformin_trial_protocol.pdf", "site_operations_handbook.pdf"


def _drop(settings, sample_pdfs, *names: str) -> list[str]:
    uris = [join_uri(settings.inbox_uri, name) for name in names]
    for uri, name in zip(uris, names):
        Storage(settings).write_bytes(uri, sample_pdfs[name].read_bytes())
    return uris


def test_an_unexpected_error_on_one_document_fails_it_alone_and_counts_as_its_attempt(
        pipeline_env, sample_pdfs, monkeypatch):
    good, other = _drop(pipeline_env, sample_pdfs, GOOD, OTHER)
    chunker = STAGES["chunk"].worker
    real_call = chunker.__call__

    def fussy(self, doc, part):
        if doc.document.source_uri == other:
            raise IndexError("list index out of range")  # a library tripping on this document's layout
        return real_call(self, doc, part)

    monkeypatch.setattr(chunker, "__call__", fussy)
    summary = ingest_like_the_dag("run-1")
    entries = Ledger.open(pipeline_env).entries()
    assert entries[good].status == Status.INGESTED
    assert entries[other].status == Status.FAILED and entries[other].attempts == 1
    assert entries[other].error_stage == "chunk"
    assert "chunk failed on this document: IndexError: list index out of range" in entries[other].error
    assert [row["source_uri"] for row in summary["failed"]] == [other]


def test_three_vector_store_outages_in_a_row_give_up_no_document_and_the_next_run_ingests_them(
        pipeline_env, sample_pdfs, monkeypatch):
    assert pipeline_env.max_attempts <= 3  # otherwise three outages would prove nothing
    uris = _drop(pipeline_env, sample_pdfs, GOOD, OTHER)
    loader = STAGES["load"].worker
    real_call = loader.__call__

    def store_down(self, doc, part):
        raise ConnectionRefusedError(111, "Connection refused: the vector store is down")

    monkeypatch.setattr(loader, "__call__", store_down)
    ledger = Ledger.open(pipeline_env)
    for run in ("run-1", "run-2", "run-3"):
        summary = ingest_like_the_dag(run)
        entries = ledger.entries()
        for uri in uris:
            assert entries[uri].status == Status.FAILED and entries[uri].attempts == 0, run
            assert entries[uri].error_stage == "load" and "not this document's doing" in entries[uri].error
        assert summary["stages"]["embed"]["documents"] == 2  # everything before the outage went through
    monkeypatch.setattr(loader, "__call__", real_call)
    recovered = ingest_like_the_dag("run-4")
    assert {row["reason"] for row in recovered["touched"]} == {str(Reason.RETRY)}
    entries = ledger.entries()
    assert all(entries[uri].status == Status.INGESTED for uri in uris)
    # The outage cost no work already done: the upstream stages' results were reused.
    assert recovered["stages"]["embed"]["reused"] == 2
