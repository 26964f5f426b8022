"""The Pinecone vector store against a local fake of Pinecone's control and data planes, through
the real SDK: the index made for the embedder, requests within the service's limits, metadata
cut to size, stale vectors of one source removed, and a retrieval over what the load stage wrote."""

from __future__ import annotations

import pytest

from include.backends.vector_stores import (
    EmbedderInfo,
    EmbedderMismatch,
    PineconeStore,
    VectorRecord,
    fit_metadata,
)
from include.settings import PipelineSettings
from tests.fakes.pinecone_server import FakePinecone

MINILM = EmbedderInfo("minilm:packaged:all-MiniLM-L6-v2", 8)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("PINECONE_API_KEY", "test-key")
    with FakePinecone() as fake:
        yield fake


def _store(fake: FakePinecone, **options) -> PineconeStore:
    return PineconeStore(PipelineSettings(vector_store="pinecone", pinecone_host=fake.control_host, **options))


def _record(source: str, doc_id: str, n: int, text: str = "Doses are titrated weekly.") -> VectorRecord:
    vector = [0.0] * 8
    vector[n % 8] = 1.0
    return VectorRecord(id=f"{doc_id}#{n}", vector=vector, text=text,
                        metadata={"doc_id": doc_id, "chunk_no": n, "source_uri": source, "page_start": 1,
                                  "page_end": 1, "heading": "Dosing", "entities": "{}", "key_phrases": "[]"})


def test_the_index_is_made_for_the_first_embedder_and_refuses_another(fake):
    store = _store(fake)
    assert store.embedder() is None and store.query([1.0] + [0.0] * 7, 3) == []
    store.bind_embedder(MINILM)
    assert store.embedder() == MINILM
    store.bind_embedder(MINILM)  # the same embedder again: fine
    with pytest.raises(EmbedderMismatch, match="not of openai:text-embedding-3-small"):
        store.bind_embedder(EmbedderInfo("openai:text-embedding-3-small", 8))
    with pytest.raises(EmbedderMismatch):
        store.bind_embedder(EmbedderInfo(MINILM.name, 16))


def test_large_loads_go_out_in_requests_within_pinecone_limits(fake):
    store = _store(fake, pinecone_namespace="bulk")
    store.bind_embedder(MINILM)
    text = "Lactic acidosis is rare but serious. " * 40  # ~1.5 KB, like a chunk
    store.upsert([_record("s3://b/inbox/big.pdf", "big-0123456789ab", n, text) for n in range(2500)])
    assert fake.count("/vectors/upsert", status=400) == 0
    assert all(r.vectors <= 1000 and r.body_bytes < 2 * 1024 * 1024 for r in fake.requests if r.vectors)
    assert len(fake.vectors("documents", "bulk")) == 2500 and store.count("big-0123456789ab") == 2500


def test_metadata_over_40_kb_is_cut_and_says_what_was_cut(fake):
    store = _store(fake)
    store.bind_embedder(MINILM)
    store.upsert([_record("s3://b/inbox/long.pdf", "long-0123456789ab", 0, "word " * 20_000)])
    (_, metadata), = fake.vectors("documents").values()
    assert metadata["trimmed"] == "text" and metadata["text"].startswith("word word")
    assert len(metadata["text"]) < 40 * 1024
    assert fit_metadata({"text": "short"}) == ({"text": "short"}, [])


def test_stale_vectors_of_one_source_go_and_a_namesake_elsewhere_stays(fake):
    store = _store(fake)
    store.bind_embedder(MINILM)
    old = [_record("s3://b/inbox/a/report.pdf", "report-aaaaaaaaaaaa", n) for n in range(3)]
    new = [_record("s3://b/inbox/a/report.pdf", "report-bbbbbbbbbbbb", n) for n in range(2)]
    namesake = [_record("s3://b/inbox/b/report.pdf", "report-cccccccccccc", n) for n in range(2)]
    store.upsert(old + new + namesake)
    removed = store.delete_stale("s3://b/inbox/a/report.pdf", keep_ids={r.id for r in new})
    assert removed == 3
    assert set(fake.vectors("documents")) == {r.id for r in new + namesake}


def test_a_query_returns_the_nearest_passage_with_its_text_and_a_filter_narrows_it(fake):
    store = _store(fake)
    store.bind_embedder(MINILM)
    store.upsert([_record("s3://b/inbox/x.pdf", "x-0123456789ab", n, f"passage {n}") for n in range(4)])
    best = store.query([0.0, 0.0, 1.0] + [0.0] * 5, 2)
    assert best[0].id == "x-0123456789ab#2" and best[0].text == "passage 2" and best[0].score == pytest.approx(1.0)
    assert best[0].metadata["source_uri"] == "s3://b/inbox/x.pdf" and "text" not in best[0].metadata
    assert [h.id for h in store.query([0.0, 0.0, 1.0] + [0.0] * 5, 5, {"chunk_no": 3})] == ["x-0123456789ab#3"]
    assert sorted(i for i, _, _ in store.scan()) == [f"x-0123456789ab#{n}" for n in range(4)]


def test_the_load_stage_writes_to_pinecone_and_retrieval_finds_the_answer(fake, settings, sample_pdfs):
    from include.retrieval import search
    from include.stages.local import run_stages
    from tests.helpers import drop

    on_pinecone = settings.model_copy(update={"vector_store": "pinecone", "pinecone_host": fake.control_host})
    document = drop(on_pinecone, sample_pdfs["metformin_trial_protocol.pdf"])
    results = run_stages(on_pinecone, [document], "load")
    assert results["load"].succeeded and results["load"].metrics["vectors"] == len(fake.vectors("documents"))
    best = search("What is the maximum daily dose of metformin?", on_pinecone)[0]
    assert "2000 mg" in best.text and best.page_start == 2
