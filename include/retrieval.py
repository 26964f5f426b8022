"""Retrieval: a question in, the passages that may answer it out.

One place for both consumers, the ``rag_batch_query`` job and the ``ask`` command:

- **dense**: the store the ingest loaded, searched with the question's vector from the ingest's
  embedder (a store made by another embedder is an error, not noise); passages under
  ``retrieval_min_score`` are dropped, and a question with none left is off-topic: no passages;
- **hybrid** (default): the same dense candidates fused by reciprocal rank with BM25's
  (``include.lexical``), so a passage holding the exact term a user typed ranks high even when
  its vector is not the nearest;
- **reranked**, when ``rerank_model`` names a cross-encoder: the fused candidates re-scored
  pair by pair with the question (``include.backends.rerankers``).

Then the top ``retrieval_top_k``, in that order (``Passage.rank``). A metadata filter (``where``:
by document, by pages) applies to every side. ``Passage.score`` is always the passage's cosine
similarity to the question, whichever search found it: the number a reader can compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from include.backends.embedders import Embedder, build_embedder, embedder_info
from include.backends.rerankers import build_reranker
from include.backends.vector_stores import Filter, Hit, VectorStore, build_vector_store, check_embedder
from include.lexical import LexicalIndex, reciprocal_rank_fusion
from include.settings import PipelineSettings
from include.storage import object_name


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk with where it comes from: what the answer cites."""

    rank: int
    chunk_id: str
    doc_id: str
    source_uri: str
    page_start: int
    page_end: int
    heading: str
    score: float
    text: str

    @property
    def citation(self) -> str:
        pages = f"page {self.page_start}" if self.page_start == self.page_end else f"pages {self.page_start}-{self.page_end}"
        heading = f", {self.heading}" if self.heading else ""
        return f"{object_name(self.source_uri)}, {pages}{heading}"

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def passage_from_hit(rank: int, hit: Hit) -> Passage:
    meta = hit.metadata
    return Passage(
        rank=rank,
        chunk_id=hit.id,
        doc_id=str(meta["doc_id"]),
        source_uri=str(meta["source_uri"]),
        page_start=int(meta["page_start"]),
        page_end=int(meta["page_end"]),
        heading=str(meta.get("heading") or ""),
        score=float(hit.score),
        text=hit.text,
    )


class Retriever:
    """The store and the embedder of the ingest, checked to belong together, and the lexical
    index of the same passages (built on first use)."""

    def __init__(self, settings: PipelineSettings, store: VectorStore | None = None) -> None:
        self.store = store or build_vector_store(settings)
        self._settings = settings
        self._lexical: LexicalIndex | None = None
        self._reranker = build_reranker(settings)

    def check(self, embedder: Embedder, settings: PipelineSettings) -> None:
        check_embedder(self.store, embedder_info(settings, embedder.dimension))

    @property
    def lexical(self) -> LexicalIndex:
        if self._lexical is None:
            self._lexical = LexicalIndex.from_store(self.store)
        return self._lexical

    def __call__(self, question: str, vector: list[float], where: Filter | None = None) -> list[Passage]:
        settings = self._settings
        wanted = max(settings.retrieval_top_k, settings.retrieval_candidates)
        dense = [hit for hit in self.store.query(vector, wanted, where) if hit.score >= settings.retrieval_min_score]
        hits: list[Hit] = dense
        if dense and settings.retrieval_mode == "hybrid":
            hits = reciprocal_rank_fusion([dense, self.lexical.search(question, wanted, where)], k=settings.rrf_k)
        if self._reranker is not None:
            hits = self._reranker.rerank(question, hits)
        # Ordered by fusion or the reranker; scored by similarity to the question, which the dense
        # search gave its own hits and the store gives the others (found by BM25 alone).
        similarity = {hit.id: hit.score for hit in dense}
        hits = hits[: settings.retrieval_top_k]
        missing = [hit.id for hit in hits if hit.id not in similarity]
        if missing:
            similarity.update(self.store.similarities(vector, missing))
        return [passage_from_hit(rank, Hit(id=hit.id, score=similarity.get(hit.id, 0.0), text=hit.text,
                                           metadata=hit.metadata)) for rank, hit in enumerate(hits, 1)]


class Searcher:
    """Questions to passages in this process: the embedder and the retriever, built once."""

    def __init__(self, settings: PipelineSettings) -> None:
        self._embedder = build_embedder(settings)
        self._retriever = Retriever(settings)
        self._retriever.check(self._embedder, settings)

    def __call__(self, question: str, where: Filter | None = None) -> list[Passage]:
        return self._retriever(question, self._embedder.embed([question]).vectors[0].tolist(), where)


def search(question: str, settings: PipelineSettings, where: Filter | None = None) -> list[Passage]:
    """Embed one question and retrieve its passages, in this process."""
    return Searcher(settings)(question, where)


def passage_filter(document: str | None = None, pages: tuple[int, int] | None = None) -> Filter | None:
    """A ``where`` filter for one document (its file name, as ``Passage.citation`` shows it) and
    passages that touch a page range (first, last)."""
    parts: list[Filter] = []
    if document:
        parts.append({"document": document})
    if pages:
        first, last = pages
        parts += [{"page_start": {"$lte": last}}, {"page_end": {"$gte": first}}]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}
