"""Runs of ``document_ingest`` in this process (stages inline) where one document's output is made bad
at one stage: its gate fails that document alone, named with the expectation, in the ledger (a cause to
filter on), the report and the Data Docs; the rest of the batch is ingested."""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from include.backends.vector_stores import ChromaStore
from include.control.incremental import Reason, decide
from include.control.ledger import Ledger, Status
from include.control.quality import run_checks
from include.control.report import markdown
from include.control.settings import reload_settings
from include.fingerprints import pipeline_fingerprint
from include.quality.expectations import failures, validate
from include.stages import STAGES
from include.storage import Storage, join_uri
from tests.helpers import ingest_like_the_dag

GOOD, OTHER = "metformin_trial_protocol.pdf", "site_operations_handbook.pdf"


@pytest.fixture
def dropped(pipeline_env, sample_pdfs) -> tuple[str, str]:
    uris = tuple(join_uri(pipeline_env.inbox_uri, name) for name in (GOOD, OTHER))
    for uri, name in zip(uris, (GOOD, OTHER)):
        Storage(pipeline_env).write_bytes(uri, sample_pdfs[name].read_bytes())
    return uris


def _spoil(monkeypatch, stage: str, target: str, spoil) -> None:
    """``spoil`` changes the first row ``stage``'s worker returns for ``target``'s document."""
    worker = STAGES[stage].worker
    real_call = worker.__call__

    def call(self, doc, part):
        payload = real_call(self, doc, part)
        if doc.document.source_uri == target and part.get("start", 0) == 0:
            spoil(payload["rows"][0])
        return payload

    monkeypatch.setattr(worker, "__call__", call)


def _kept_validations(settings) -> list[dict]:
    """The validation records the stage jobs kept beside their batch results."""
    storage = Storage(settings)
    return [record for uri in storage.list(settings.artifacts_uri) if uri.endswith(".quality.json")
            for record in storage.read_json(uri)]


def _text(uri: str) -> str:
    html = Path(urlsplit(uri).path).read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", html, flags=re.S)))


def test_a_chunk_over_the_window_fails_its_document_alone_and_waits_for_a_new_pipeline(
        pipeline_env, dropped, monkeypatch):
    good, other = dropped
    _spoil(monkeypatch, "chunk", other, lambda row: row.update(tokens=10_000))
    summary = ingest_like_the_dag("run-1")

    [failed] = summary["failed"]
    assert failed["source_uri"] == other and failed["stage"] == "chunk"
    assert "chunk's quality gate: expect_column_values_to_be_between(column=tokens, min_value=1.0, " \
           "max_value=254.0): 1 of" in failed["error"] and "tokens=10000" in failed["error"]
    ledger = Ledger.open(pipeline_env)
    entries = ledger.entries()
    assert entries[good].status == Status.INGESTED
    assert (entries[other].status, entries[other].error_cause, entries[other].attempts) == (
        Status.FAILED, "quality_gate", 1)
    assert list(ledger.entries(cause="quality_gate")) == [other]
    assert ChromaStore(pipeline_env).count(entries[other].doc_id) == 0

    # The same pipeline would fail it the same way: it waits for a fix (a new pipeline fingerprint).
    fingerprint = pipeline_fingerprint(pipeline_env)
    assert decide(entries[other], same_bytes=True, fingerprint=fingerprint, max_attempts=3) == Reason.GAVE_UP
    assert decide(entries[other], same_bytes=True, fingerprint="fixed", max_attempts=3) == Reason.RETRY

    # Every stage's gate checked the good document; the run's own checks passed; all of it in the Data Docs.
    quality = summary["quality"]
    assert (quality["validations"], quality["failed"], quality["warned"], quality["run_failures"]) == (5, 1, 0, [])
    docs = Path(urlsplit(quality["data_docs_uri"]).path).parent
    index = (docs / "index.html").read_text()  # its table's rows are data for its script
    assert all(f"validations/{suite}/run-1/" in index for suite in ("chunk", "enrich", "embed", "load", "run"))
    [page] = [p for p in docs.rglob(f"{entries[other].doc_id}.html") if "/chunk/" in p.as_posix()]
    shown = _text(page.as_uri())
    assert "Status: Failed" in shown and "tokens" in shown and "10000" in shown
    report = markdown(summary)
    assert "## Quality gates" in report and quality["data_docs_uri"] in report
    # The chunk job validated its two documents together, in one GX validation, each judged by its own rows.
    kept = _kept_validations(pipeline_env)
    assert sorted(r["stage"] for r in kept) == ["chunk", "chunk", "embed", "enrich", "load"]
    assert [r["result"]["meta"]["documents_validated_together"] for r in kept if r["stage"] == "chunk"] == [2, 2]

    monkeypatch.undo()
    monkeypatch.setenv("PIPELINE_CHUNK_MAX_TOKENS", "200")  # a new pipeline
    for name in ("work_dir", "inbox_uri", "artifacts_uri", "quarantine_uri"):
        monkeypatch.setenv(f"PIPELINE_{name.upper()}", str(getattr(pipeline_env, name)))
    reload_settings()
    retried = ingest_like_the_dag("run-2")
    assert retried["failed"] == [] and Ledger.open(pipeline_env).entries()[other].status == Status.INGESTED


def test_a_pii_shape_the_redactor_let_through_fails_the_document_before_it_reaches_the_store(
        pipeline_env, dropped, monkeypatch):
    good, other = dropped
    _spoil(monkeypatch, "enrich", other, lambda row: row.update(text=row["text"] + " Call 212-555-0142."))
    summary = ingest_like_the_dag("run-1")
    [failed] = summary["failed"]
    assert failed["stage"] == "enrich" and "pii_shape_left=PHONE" in failed["error"]
    assert "555" not in failed["error"]  # the error names the kind, never the value
    entries = Ledger.open(pipeline_env).entries()
    assert entries[good].status == Status.INGESTED and entries[other].error_cause == "quality_gate"
    store = ChromaStore(pipeline_env)
    assert store.count(entries[other].doc_id) == 0
    assert not any("555-0142" in text for _, text, _ in store.scan())
    # Nor does it stay among the artifacts: the output its gate failed is removed, its manifest says why.
    written = Storage(pipeline_env).list(join_uri(pipeline_env.artifacts_uri, "enriched", entries[other].doc_id))
    assert [uri.rsplit("/", 1)[1] for uri in written] == ["_manifest.json"]


def test_a_nan_in_a_vector_fails_its_document_at_embed(pipeline_env, dropped, monkeypatch):
    _good, other = dropped
    monkeypatch.setenv("PIPELINE_QUALITY__GATE_PARTS", "1")  # a document's one part: each validated alone
    reload_settings()
    _spoil(monkeypatch, "embed", other, lambda row: row["vector"].__setitem__(0, math.nan))
    [failed] = ingest_like_the_dag("run-1")["failed"]
    assert failed["source_uri"] == other and failed["stage"] == "embed"
    assert "non_finite_values=1" in failed["error"]
    kept = _kept_validations(pipeline_env)
    assert len(kept) == 7 and {r["result"]["meta"]["documents_validated_together"] for r in kept} == {1}


def test_a_store_that_loses_a_write_fails_the_document_at_load_and_the_next_run_tries_it_again(
        pipeline_env, dropped, monkeypatch):
    good, other = dropped
    monkeypatch.setenv("PIPELINE_QUALITY__LOAD_SETTLE_SECONDS", "1")
    reload_settings()
    real_upsert = ChromaStore.upsert

    def loses_one(self, records):
        real_upsert(self, [r for r in records if not (r.metadata["document"] == OTHER and r.metadata["chunk_no"] == 0)])

    monkeypatch.setattr(ChromaStore, "upsert", loses_one)
    [failed] = ingest_like_the_dag("run-1")["failed"]
    assert failed["stage"] == "load" and "record_problem=not in the store" in failed["error"]
    entries = Ledger.open(pipeline_env).entries()
    assert (entries[other].error_cause, entries[other].attempts) == ("store_check", 1)
    assert decide(entries[other], same_bytes=True, fingerprint=pipeline_fingerprint(pipeline_env),
                  max_attempts=3) == Reason.RETRY  # the store's doing: tried again

    monkeypatch.setattr(ChromaStore, "upsert", real_upsert)
    again = ingest_like_the_dag("run-2")
    assert again["failed"] == [] and Ledger.open(pipeline_env).entries()[other].status == Status.INGESTED


def test_a_gate_set_to_warn_lets_the_document_through_and_counts_what_it_found(pipeline_env, dropped, monkeypatch):
    _good, other = dropped
    monkeypatch.setenv("PIPELINE_QUALITY__CHUNK", "warn")
    monkeypatch.setenv("PIPELINE_QUALITY__EMBED", "off")
    reload_settings()
    _spoil(monkeypatch, "chunk", other, lambda row: row.update(tokens=10_000))
    summary = ingest_like_the_dag("run-1")
    assert summary["failed"] == [] and summary["succeeded"] == 2
    assert summary["stages"]["chunk"]["quality_warnings"] == 1
    # Four gated stages of two documents, embed's off: 6, and the run's own checks.
    assert (summary["quality"]["validations"], summary["quality"]["warned"]) == (6, 1)


def test_the_run_checks_fail_a_run_whose_vectors_and_chunks_disagree_or_that_left_a_claim():
    touched = [{"doc_id": "a", "source_uri": "s3://d/inbox/a.pdf", "status": "ingested", "chunks": 4, "vectors": 4},
               {"doc_id": "b", "source_uri": "s3://d/inbox/b.pdf", "status": "ingested", "chunks": 4, "vectors": 3},
               {"doc_id": "c", "source_uri": "s3://d/inbox/c.pdf", "status": "failed", "chunks": 2}]
    assert failures(validate(run_checks(touched[::2], claimed=set()))) == []
    failed = failures(validate(run_checks(touched, claimed={"s3://d/inbox/c.pdf"})))
    assert [f.split("(")[0] for f in failed] == ["expect_column_pair_values_to_be_equal",
                                                 "expect_column_values_to_be_in_set"]
    assert "b" in failed[0] or "1 of 2 unexpected" in failed[0]


def test_the_data_docs_render_every_failure_and_passed_validations_up_to_the_bound(pipeline_env, dropped, monkeypatch):
    _good, other = dropped
    monkeypatch.setenv("PIPELINE_QUALITY__DATA_DOCS_MAX_PASSED", "1")
    reload_settings()
    _spoil(monkeypatch, "embed", other, lambda row: row["vector"].__setitem__(0, math.nan))
    quality = ingest_like_the_dag("run-1")["quality"]
    # 2 chunk, 2 enrich, 2 embed (one failed), 1 load validations; shown: the failure, one passed, the run's.
    assert (quality["validations"], quality["failed"], quality["rendered"], quality["passed_not_rendered"]) == (
        7, 1, 3, 5)
    pages = [p.as_posix() for p in Path(urlsplit(quality["data_docs_uri"]).path).parent.rglob("validations/**/*.html")]
    assert sum("/embed/" in page for page in pages) >= 1 and sum("/run/" in page for page in pages) == 1
