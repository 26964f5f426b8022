from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from include.backends.embedders import MiniLMEmbedder
from include.backends.vector_stores import ChromaStore
from include.retrieval import search
from include.settings import PipelineSettings
from include.storage import Storage
from tests.helpers import drop, run_until


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder(PipelineSettings())


def test_packaged_minilm_gives_unit_vectors_that_rank_by_meaning(embedder):
    batch = embedder.embed(["The dose of metformin is 2000 mg.", "Metformin dosing", "Shipping on Mondays"])
    assert batch.vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    similarity = batch.vectors @ batch.vectors[0]
    assert similarity[1] > similarity[2]


def test_a_text_longer_than_the_model_window_is_embedded_whole_not_cut(embedder):
    head = "Metformin dosing schedule and titration. " * 30
    tail = "Shipments of blood samples leave on Mondays and Wednesdays. " * 30
    batch = embedder.embed([head + tail, head, tail])
    assert batch.windows[0] > 1 and batch.tokens[0] > embedder.max_tokens
    both, only_head, only_tail = batch.vectors
    # The tail counts: a model that truncated at 256 word pieces would ignore it.
    assert both @ only_tail > 0.5
    assert both @ only_tail > only_head @ only_tail


def test_embed_and_load_put_one_vector_per_chunk_and_reruns_add_none(settings, sample_pdfs, ray_local):
    doc = drop(settings, sample_pdfs["metformin_trial_protocol.pdf"])
    manifests = run_until(settings, doc, "load")
    chunks = manifests["chunk"].metrics["chunks"]

    table = pq.read_table(io.BytesIO(Storage(settings).read_bytes(manifests["embed"].outputs["embeddings"])))
    assert table.num_rows == chunks and len(table.column("vector")[0]) == 384
    assert manifests["load"].metrics["vectors"] == chunks

    store = ChromaStore(settings)
    assert store.count() == chunks
    run_until(settings, doc, "load")  # a re-run: every stage but load reuses its result
    assert ChromaStore(settings).count() == chunks

    best = search("What is the maximum daily dose of metformin?", settings)[0]
    assert "2000 mg" in best.text and best.page_start == 2 and best.rank == 1


def test_a_changed_file_replaces_its_old_vectors(settings, sample_pdfs, ray_local):
    old = drop(settings, sample_pdfs["adverse_event_guide.pdf"], name="guide.pdf")
    run_until(settings, old, "load")
    new = drop(settings, sample_pdfs["site_operations_handbook.pdf"], name="guide.pdf")  # same key, new bytes
    assert new.doc_id != old.doc_id
    manifests = run_until(settings, new, "load")
    store = ChromaStore(settings)
    assert store.count(old.doc_id) == 0
    assert store.count() == store.count(new.doc_id) == manifests["chunk"].metrics["chunks"]
    assert manifests["load"].metrics["stale_vectors_removed"] >= 1


def test_rechunking_into_fewer_chunks_leaves_no_stale_vectors(settings, sample_pdfs, ray_local):
    doc = drop(settings, sample_pdfs["metformin_trial_protocol.pdf"])
    small = settings.model_copy(update={"chunk_max_tokens": 48})
    many = run_until(small, doc, "load")["chunk"].metrics["chunks"]
    few = run_until(settings, doc, "load")["chunk"].metrics["chunks"]
    assert many > few
    assert ChromaStore(settings).count() == ChromaStore(settings).count(doc.doc_id) == few
