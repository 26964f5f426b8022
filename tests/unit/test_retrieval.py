"""Hybrid retrieval: dense and BM25 fused by reciprocal rank, filters on both sides, an optional reranker."""

from __future__ import annotations

import pytest

from include.backends.embedders import MiniLMEmbedder, embedder_info
from include.backends.vector_stores import ChromaStore, Hit, VectorRecord
from include.lexical import LexicalIndex, matches, reciprocal_rank_fusion
from include.retrieval import Searcher, passage_filter
from include.settings import PipelineSettings

PASSAGES = [  # (document, page, heading, text)
    ("bzip2.pdf", 3, "Options", "-s (--small) reduces memory usage for compression, decompression and testing."),
    ("bzip2.pdf", 4, "Memory management", "Decompression needs about 3700 kbytes for the default block size."),
    ("bzip2.pdf", 9, "Errors", "BZ_SEQUENCE_ERROR is returned when functions are called in the wrong order."),
    ("nettle.pdf", 31, "Blowfish", "blowfish_set_key returns zero when the key is weak."),
    ("nettle.pdf", 42, "CBC", "The initialization vector need not be kept secret."),
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder(PipelineSettings())


@pytest.fixture
def store(settings, embedder) -> ChromaStore:
    store = ChromaStore(settings)
    store.bind_embedder(embedder_info(settings, embedder.dimension))
    vectors = embedder.embed([f"{heading}\n{text}" for _, _, heading, text in PASSAGES]).vectors
    store.upsert([
        VectorRecord(f"{document}#{n}", vector.tolist(), text,
                     {"doc_id": document, "source_uri": f"s3://docs/inbox/{document}", "document": document,
                      "page_start": page, "page_end": page, "heading": heading, "chunk_no": n})
        for n, ((document, page, heading, text), vector) in enumerate(zip(PASSAGES, vectors))
    ])
    return store


def test_filters_follow_the_vector_stores_where_syntax():
    meta = {"document": "a.pdf", "page_start": 3, "page_end": 5}
    assert matches(meta, None) and matches(meta, {"document": "a.pdf"})
    assert not matches(meta, {"document": "b.pdf"})
    assert matches(meta, passage_filter("a.pdf", (5, 9))) and matches(meta, passage_filter(pages=(1, 3)))
    assert not matches(meta, passage_filter("a.pdf", (6, 9)))
    assert matches(meta, {"$or": [{"document": "b.pdf"}, {"page_start": {"$in": [3, 4]}}]})
    assert matches(meta, {"page_end": {"$gt": 4, "$lt": 6, "$ne": 4}})
    with pytest.raises(ValueError, match=r"unsupported filter operator.*\$regex"):
        matches(meta, {"document": {"$regex": "a"}})


def test_reciprocal_rank_fusion_rewards_passages_both_rankings_agree_on():
    def hits(*ids):
        return [Hit(i, 0.0, i, {}) for i in ids]

    fused = reciprocal_rank_fusion([hits("a", "b", "c"), hits("c", "d")], k=60)
    assert [hit.id for hit in fused] == ["c", "a", "b", "d"]
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[-1].score == pytest.approx(1 / 62)


def test_bm25_finds_the_exact_term_and_honours_the_filter(store):
    index = LexicalIndex.from_store(store)
    assert [hit.id for hit in index.search("BZ_SEQUENCE_ERROR", 3)] == ["bzip2.pdf#2"]
    # Stemmed: "decompressing" finds "Decompression"; the heading is searched too.
    assert {hit.id for hit in index.search("decompressing", 5)} == {"bzip2.pdf#0", "bzip2.pdf#1"}
    assert index.search("BZ_SEQUENCE_ERROR", 3, {"document": "nettle.pdf"}) == []
    assert index.search("the of and", 3) == []  # stop words alone match nothing


def test_hybrid_search_puts_the_passage_with_the_exact_term_first(settings, store):
    """A question naming an identifier: BM25 knows it exactly; fusion lifts its passage to the top."""
    question = "In which case do I get BZ_SEQUENCE_ERROR?"
    hybrid = Searcher(settings)(question)
    assert hybrid[0].chunk_id == "bzip2.pdf#2" and hybrid[0].page_start == 9
    assert 0.5 < hybrid[0].score <= 1.0  # the cosine similarity, not the fused score
    dense = Searcher(settings.model_copy(update={"retrieval_mode": "dense"}))(question)
    assert {p.chunk_id for p in dense} >= {"bzip2.pdf#2"}  # the same candidates, in the embedder's order


def test_filters_by_document_and_pages_apply_to_both_searches(settings, store):
    search = Searcher(settings)
    only_nettle = search("Which key is weak?", passage_filter("nettle.pdf"))
    assert only_nettle and {p.source_uri for p in only_nettle} == {"s3://docs/inbox/nettle.pdf"}
    pages = search("memory for decompression", passage_filter("bzip2.pdf", (4, 9)))
    assert pages and all(4 <= p.page_start <= 9 for p in pages)


def test_an_off_topic_question_gets_no_passages_in_hybrid_mode_too(settings, store):
    assert Searcher(settings)("What is the capital of France?") == []


def test_the_lexical_index_holds_what_the_store_holds(settings, store):
    store._collection.delete(ids=["bzip2.pdf#2"])
    assert LexicalIndex.from_store(store).search("BZ_SEQUENCE_ERROR", 3) == []


def test_a_cross_encoder_reranks_the_fused_candidates_by_its_own_scores(settings, store, tmp_path):
    """No PyPI package ships a cross-encoder: a tiny untrained one, made here, tests the mechanics
    (loading offline, scoring pairs, ordering); its judgement means nothing."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from include.backends.embedders import PACKAGED_MINILM, resolve_model_location

    folder = tmp_path / "tiny-cross-encoder"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_location(PACKAGED_MINILM))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    reranked = settings.model_copy(update={"rerank_model": str(folder), "retrieval_top_k": 3})
    question = "How much memory does decompression need?"
    passages = Searcher(reranked)(question)
    fused = Searcher(settings.model_copy(update={"retrieval_top_k": 30}))(question)
    model = CrossEncoder(str(folder), device="cpu")
    expected = sorted(fused, key=lambda p: -float(model.predict([(question, f"{p.heading}\n{p.text}")])[0]))
    assert [p.chunk_id for p in passages] == [p.chunk_id for p in expected[:3]]
    # Ordered by the reranker, scored by similarity to the question, as every passage is.
    similarity = {p.chunk_id: p.score for p in Searcher(settings.model_copy(update={"retrieval_mode": "dense",
                                                                                  "retrieval_top_k": 30}))(question)}
    assert all(p.score == pytest.approx(similarity[p.chunk_id], abs=1e-5) for p in passages if p.chunk_id in similarity)
