"""Batches: planning, and a batch of good and bad documents on Ray Data equal to the in-process path."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from include.contract import BatchSpec, DocumentRef
from include.control.batching import plan_batches, read_plan, run_folder
from include.stages.execution import run_inline, run_on_ray
from include.stages.local import run_stages
from include.storage import Storage, join_uri
from tests.helpers import drop, upgraded_ledger

MAX_MAP_LENGTH = 1024  # Airflow's default [core] max_map_length


def _docs(sizes: list[int]) -> list[DocumentRef]:
    return [
        DocumentRef(doc_id=f"d{n}", source_uri=f"s3://b/inbox/{n}.pdf", content_sha256="0" * 64, size_bytes=size)
        for n, size in enumerate(sizes)
    ]


def test_batches_respect_both_bounds_keep_order_and_give_a_big_file_its_own_batch():
    docs = _docs([10, 10, 10, 10, 10, 500, 10, 10])
    batches = plan_batches(docs, max_documents=3, max_bytes=100, max_batches=100)
    assert [[d.doc_id for d in b] for b in batches] == [["d0", "d1", "d2"], ["d3", "d4"], ["d5"], ["d6", "d7"]]
    assert plan_batches(docs, max_documents=3, max_bytes=100, max_batches=100) == batches  # deterministic


def test_a_drop_bigger_than_airflow_can_map_gets_bigger_batches_never_a_failed_run():
    docs = _docs([1000] * 5000)
    batches = plan_batches(docs, max_documents=2, max_bytes=10**9, max_batches=MAX_MAP_LENGTH)
    assert len(batches) <= MAX_MAP_LENGTH
    assert [d for batch in batches for d in batch] == docs  # every document, once, in order


def test_a_retried_plan_returns_the_same_batches_even_if_the_inbox_changed(settings, sample_pdfs, monkeypatch):
    from include.control import ingest
    from include.control.settings import ControlSettings

    control = ControlSettings(**settings.model_dump(), batch_max_documents=2)
    monkeypatch.setattr(ingest, "get_control_settings", lambda: control)
    upgraded_ledger(control)
    for name in ("metformin_trial_protocol.pdf", "site_operations_handbook.pdf", "adverse_event_guide.pdf"):
        drop(settings, sample_pdfs[name])
    first = ingest.plan_run("document_ingest", "manual__2026-11-22T05:00:00+00:00", None)
    assert [b["documents"] for b in first] == [2, 1]
    drop(settings, sample_pdfs["adverse_event_guide.pdf"], name="late arrival.pdf")
    assert ingest.plan_run("document_ingest", "manual__2026-11-22T05:00:00+00:00", None) == first
    storage = Storage(settings)
    plan = read_plan(storage, run_folder(settings.artifacts_uri, "document_ingest", "manual__2026-11-22T05:00:00+00:00"))
    spec = BatchSpec.model_validate(storage.read_json(plan.batches[0].batch_uri))
    assert [d.name for d in spec.documents] == ["adverse_event_guide.pdf", "metformin_trial_protocol.pdf"]


def test_the_runs_budget_is_shared_among_its_batches_by_their_bytes(settings):
    from include.control.batching import RunPlan, write_plan

    storage = Storage(settings)
    folder = run_folder(settings.artifacts_uri, "document_ingest", "budget")
    batches = [_docs([298, 0]), _docs([99])]  # each file weighs its bytes plus one: 300 and 100
    plan = write_plan(storage, folder, RunPlan(run_id="budget", batches=[], budget_usd=4.0), batches)
    shares = [BatchSpec.model_validate(storage.read_json(ref.batch_uri)).budget_usd for ref in plan.batches]
    assert shares == [3.0, 1.0] and read_plan(storage, folder).budget_usd == 4.0
    unlimited = write_plan(storage, folder, RunPlan(run_id="budget", batches=[]), batches)
    assert BatchSpec.model_validate(storage.read_json(unlimited.batches[0].batch_uri)).budget_usd is None


def test_sensor_keys_are_relative_to_the_bucket_and_escape_wildcards(monkeypatch):
    from include.control import ingest
    from include.control.settings import ControlSettings

    monkeypatch.setattr(ingest, "get_control_settings", lambda: ControlSettings(inbox_uri="s3://docs/in box/"))
    assert ingest.sensor_keys(None) == ["in box/*"]
    assert ingest.sensor_keys(["a#1?.pdf", "s3://docs/in box/[draft].pdf"]) == ["in box/a#1[?].pdf", "in box/[[]draft].pdf"]
    for outside in ("s3://other/in box/b.pdf", "s3://docs/elsewhere/b.pdf"):
        with pytest.raises(ValueError, match="not under the inbox s3://docs/in box/"):
            ingest.sensor_keys([outside])
    assert ingest.sensor_keys(["q.parquet"], "s3://docs/queries/") == ["queries/q.parquet"]


@pytest.fixture
def mixed_batch(settings, sample_pdfs, tmp_path) -> list[DocumentRef]:
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n1 0 obj << broken")
    return [
        drop(settings, sample_pdfs["metformin_trial_protocol.pdf"], name="trial #1.PDF"),
        drop(settings, corrupt),
        drop(settings, sample_pdfs["site_operations_handbook.pdf"]),
    ]


def _chunks_and_vectors(settings, results) -> dict[str, tuple[list[dict], np.ndarray]]:
    storage = Storage(settings)
    out = {}
    for outcome in results["embed"].succeeded:
        manifest = json.loads(storage.read_text(outcome.manifest_uri))
        table = pq.read_table(io.BytesIO(storage.read_bytes(manifest["outputs"]["embeddings"])))
        rows = table.drop_columns(["vector"]).to_pylist()
        out[outcome.doc_id] = (rows, np.asarray(table.column("vector").to_pylist()))
    return out


def test_a_batch_on_ray_data_fails_bad_documents_alone_and_equals_the_in_process_path(
    settings, mixed_batch, ray_local, tmp_path
):
    # Small parts, so every document is split across several units of work.
    on_ray = settings.model_copy(update={"chunks_per_part": 1, "extract_pages_per_part": 1})
    ray_results = run_stages(on_ray, mixed_batch, "embed", executor=run_on_ray)
    good, corrupt, handbook = mixed_batch

    extract = {o.doc_id: o for o in ray_results["extract"].documents}
    assert extract[corrupt.doc_id].status == "failed" and "corrupt.pdf: the PDF is corrupt" in extract[corrupt.doc_id].error
    assert extract[good.doc_id].status == extract[handbook.doc_id].status == "succeeded"
    for stage in ("chunk", "enrich", "embed"):  # the bad one is left out of every later stage
        assert [o.doc_id for o in ray_results[stage].documents] == [good.doc_id, handbook.doc_id]
        assert all(o.status == "succeeded" for o in ray_results[stage].documents)

    inline = settings.model_copy(update={"artifacts_uri": (tmp_path / "inline").as_uri() + "/"})
    inline_results = run_stages(inline, mixed_batch, "embed", executor=run_inline)
    ours, theirs = _chunks_and_vectors(on_ray, ray_results), _chunks_and_vectors(inline, inline_results)
    assert set(ours) == set(theirs) == {good.doc_id, handbook.doc_id}
    for doc_id, (rows, vectors) in ours.items():
        assert rows == theirs[doc_id][0]  # same chunks, text and metadata
        assert np.allclose(vectors, theirs[doc_id][1], atol=1e-5)


def test_a_batch_loads_into_the_store_and_a_rerun_adds_nothing(settings, mixed_batch, ray_local):
    from include.backends.vector_stores import ChromaStore

    first = run_stages(settings, mixed_batch, "load", executor=run_on_ray)
    chunks = sum(o.metrics["chunks"] for o in first["chunk"].succeeded)
    assert ChromaStore(settings).count() == first["load"].metrics["vectors"] == chunks
    second = run_stages(settings, mixed_batch, "load", executor=run_on_ray)
    assert all(o.reused for stage in ("extract", "chunk", "enrich", "embed") for o in second[stage].succeeded)
    assert ChromaStore(settings).count() == chunks
    sources = {m["source_uri"] for m in ChromaStore(settings)._collection.get(include=["metadatas"])["metadatas"]}
    assert join_uri(settings.inbox_uri, "trial #1.PDF") in sources
