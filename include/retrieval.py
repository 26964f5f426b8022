"""Retrieval: a question's vector in, the passages that may answer it out.

One place for both consumers, the ``rag_batch_query`` job and the ``ask`` command: the
store the ingest loaded, searched with the ingest's embedder (a store made by another
embedder is an error, not noise), top ``retrieval_top_k`` passages, those under
``retrieval_min_score`` dropped, an optional metadata filter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from include.backends.embedders import Embedder, build_embedder, embedder_info
from include.backends.vector_stores import Filter, Hit, VectorStore, build_vector_store, check_embedder
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
    """The store and the embedder of the ingest, checked to belong together."""

    def __init__(self, settings: PipelineSettings, store: VectorStore | None = None) -> None:
        self.store = store or build_vector_store(settings)
        self._k = settings.retrieval_top_k
        self._min_score = settings.retrieval_min_score

    def check(self, embedder: Embedder, settings: PipelineSettings) -> None:
        check_embedder(self.store, embedder_info(settings, embedder.dimension))

    def __call__(self, vector: list[float], where: Filter | None = None) -> list[Passage]:
        hits = self.store.query(vector, self._k, where)
        kept = [hit for hit in hits if hit.score >= self._min_score]
        return [passage_from_hit(rank, hit) for rank, hit in enumerate(kept, 1)]


def search(question: str, settings: PipelineSettings, where: Filter | None = None) -> list[Passage]:
    """Embed one question and retrieve its passages, in this process."""
    embedder = build_embedder(settings)
    retriever = Retriever(settings)
    retriever.check(embedder, settings)
    return retriever(embedder.embed([question]).vectors[0].tolist(), where)
