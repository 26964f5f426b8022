"""Old runs replayed after newer ones (a user clears an old run's tasks): its load writes nothing over the
newer version's vectors, and its prune, replaying an old list of deleted documents, removes nothing a
newer run ingested since. Stages inline, an embedded Chroma."""

from __future__ import annotations

from include.backends.vector_stores import ChromaStore
from include.contract import PruneSpec
from include.control import ingest
from include.control.ledger import Ledger, Status
from include.stages import STAGES
from include.stages.__main__ import load_inputs
from include.stages.base import run_stage
from include.stages.execution import run_inline
from include.storage import Storage, join_uri
from tests.helpers import DAG_ID, ingest_like_the_dag

GOOD, OTHER = "metformin_trial_protocol.pdf", "site_operations_handbook.pdf"


def _versions_in_store(settings, source_uri: str) -> set[str]:
    found = ChromaStore(settings)._collection.get(where={"source_uri": source_uri}, include=["metadatas"])
    return {meta["doc_id"] for meta in found["metadatas"]}


def _embed_result(settings, run_id: str) -> str:
    """The embed result one run's batch wrote (what its load job read)."""
    prefix = ingest.stage_result_prefix(DAG_ID, run_id, "batch-0001", "embed")
    return join_uri(prefix, "inline.json")


def test_a_cleared_old_runs_load_writes_nothing_over_the_newer_version(pipeline_env, sample_pdfs):
    storage = Storage(pipeline_env)
    uri = join_uri(pipeline_env.inbox_uri, "report.pdf")
    storage.write_bytes(uri, sample_pdfs[GOOD].read_bytes())
    ingest_like_the_dag("run-1")
    # run-1's load job as it started (a retry, or a cleared task): its inputs in hand.
    inputs = load_inputs("load", pipeline_env, batch=None, upstream=_embed_result(pipeline_env, "run-1"))
    storage.write_bytes(uri, sample_pdfs[OTHER].read_bytes())  # a new version, ingested by a newer run
    ingest_like_the_dag("run-2")
    newer = Ledger.open(pipeline_env).entries()[uri].indexed_doc_id
    assert _versions_in_store(pipeline_env, uri) == {newer}

    result = run_stage(STAGES["load"], pipeline_env, inputs.items, batch_id=inputs.batch_id, executor=run_inline)
    [outcome] = result.documents
    assert outcome.status == "failed" and "nothing written for it" in outcome.error
    assert _versions_in_store(pipeline_env, uri) == {newer}  # the newer version's vectors, alone


def test_a_replayed_prune_spares_a_document_uploaded_and_ingested_again_since(pipeline_env, sample_pdfs):
    from include.prune import prune

    storage = Storage(pipeline_env)
    ledger = Ledger.open(pipeline_env)
    uri = join_uri(pipeline_env.inbox_uri, "back.pdf")
    storage.write_bytes(uri, sample_pdfs[GOOD].read_bytes())
    ingest_like_the_dag("run-1")
    storage.delete(uri)
    deleting = ingest_like_the_dag("run-2")
    assert deleting["deleted"] == [uri] and ledger.entries()[uri].status == Status.DELETED
    old_spec = PruneSpec.model_validate(storage.read_json(ingest.prune_spec_uri(DAG_ID, "run-2")))

    storage.write_bytes(uri, sample_pdfs[OTHER].read_bytes())  # dropped back, and ingested again
    ingest_like_the_dag("run-3")
    current = ledger.entries()[uri].indexed_doc_id
    assert _versions_in_store(pipeline_env, uri) == {current}

    # run-2's prune, cleared and run again with its old spec.
    replayed = prune(old_spec)
    assert replayed.removed == {uri: 0} and replayed.kept == {uri: current}
    ingest.record_prune("run-2", replayed)
    assert _versions_in_store(pipeline_env, uri) == {current}
    entry = ledger.entries()[uri]
    assert entry.status == Status.INGESTED and entry.indexed_doc_id == current  # run-3's record stands
