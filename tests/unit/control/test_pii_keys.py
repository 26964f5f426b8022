"""A key that carries PII (``W9_536-22-8471_signed.pdf``) reaches the vector store only redacted: in the
vector ids, in ``source_uri`` and in ``document``, under a keyed pseudonym that keeps two such sources
apart; the ledger keeps the real key, and deleting the file removes exactly its vectors. Stages inline,
an embedded Chroma."""

from __future__ import annotations

from include.audit import audit, downstream_texts
from include.backends.vector_stores import ChromaStore
from include.control.ledger import Ledger, Status
from include.storage import Storage, join_uri
from tests.helpers import ingest_like_the_dag

GOOD, OTHER = "metformin_trial_protocol.pdf", "site_operations_handbook.pdf"
SSN_KEY, OTHER_SSN_KEY = "W9_536-22-8471_signed.pdf", "W9_412-09-3377_signed.pdf"


def _records(settings) -> list[tuple[str, dict]]:
    found = ChromaStore(settings)._collection.get(include=["metadatas"])
    return list(zip(found["ids"], found["metadatas"]))


def test_a_key_that_carries_an_ssn_reaches_the_store_only_redacted(pipeline_env, sample_pdfs):
    from include.retrieval import search

    storage = Storage(pipeline_env)
    for key in (SSN_KEY, OTHER_SSN_KEY):
        storage.write_bytes(join_uri(pipeline_env.inbox_uri, key), sample_pdfs[GOOD].read_bytes())
    summary = ingest_like_the_dag("pii-keys-1")
    assert summary["succeeded"] == 2

    records = _records(pipeline_env)
    assert records
    for vector_id, metadata in records:
        for value in (vector_id, *map(str, metadata.values())):
            assert "536-22-8471" not in value and "412-09-3377" not in value, (vector_id, metadata)
    leaks, read = audit(downstream_texts(pipeline_env), truth=None)
    assert read and leaks == []  # the project's own audit: ids and metadata included
    stored = {metadata["source_uri"] for _id, metadata in records}
    assert len(stored) == 2  # the two sources stay apart...
    assert {uri.split("#")[0] for uri in stored} == {pipeline_env.inbox_uri + "W9_[REDACTED:SSN]_signed.pdf"}
    assert {metadata["document"] for _id, metadata in records} == {"W9_[REDACTED:SSN]_signed.pdf"}
    best = search("What is the maximum daily dose of metformin in the trial?", pipeline_env)
    assert best and best[0].source_uri in stored

    # ...the ledger keeps the real keys...
    entries = Ledger.open(pipeline_env).entries()
    assert {join_uri(pipeline_env.inbox_uri, key) for key in (SSN_KEY, OTHER_SSN_KEY)} <= set(entries)

    # ...and deleting one removes its vectors alone.
    storage.delete(join_uri(pipeline_env.inbox_uri, SSN_KEY))
    ingest_like_the_dag("pii-keys-2")
    assert Ledger.open(pipeline_env).entries()[join_uri(pipeline_env.inbox_uri, SSN_KEY)].status == Status.DELETED
    left = {metadata["source_uri"] for _id, metadata in _records(pipeline_env)}
    assert len(left) == 1 and left < stored


def test_without_the_pseudonym_key_such_a_document_fails_alone_naming_the_key(pipeline_env, sample_pdfs,
                                                                            monkeypatch):
    monkeypatch.delenv("SOURCE_PSEUDONYM_KEY")
    storage = Storage(pipeline_env)
    storage.write_bytes(join_uri(pipeline_env.inbox_uri, SSN_KEY), sample_pdfs[GOOD].read_bytes())
    storage.write_bytes(join_uri(pipeline_env.inbox_uri, OTHER), sample_pdfs[OTHER].read_bytes())
    summary = ingest_like_the_dag("pii-keys-3")
    assert summary["succeeded"] == 1
    [failed] = summary["failed"]
    assert failed["stage"] == "load" and "SOURCE_PSEUDONYM_KEY" in failed["error"]
    assert "536-22-8471" not in failed["error"].split(": ", 1)[1]  # the reason names the redacted form
    assert all("W9" not in metadata["source_uri"] for _id, metadata in _records(pipeline_env))
