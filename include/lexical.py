"""Lexical search: BM25 over the passages in the vector store, for the exact terms a user types.

Dense vectors find passages that mean what the question means but blur exact tokens: a function
name (``asn1_der_decoding``), an option (``--strict``), a constant (``BZ_SEQUENCE_ERROR``). BM25
(``bm25s``, Snowball-stemmed, English stop words out) scores exact term overlap instead.

The index is built from the store's own contents (``VectorStore.scan``: ids, texts and metadata)
when a retriever starts, so it always holds what is loaded, no more and no less: no second index
to keep in step with loads and deletions. The price is one scan per retriever (one per query job
actor, one per ``ask``), which ``benchmarks/bench_retrieval.py`` measures. A store with its own
sparse index (Chroma's is Chroma Cloud only; Pinecone's sparse-dense) is the better home past a
few hundred thousand chunks.

Filters use the vector store's ``where`` syntax, evaluated here on each passage's metadata, so
both sides of a hybrid search see the same passages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from include.backends.vector_stores import Filter, Hit, VectorStore

log = logging.getLogger(__name__)


def matches(metadata: dict[str, Any], where: Filter | None) -> bool:
    """Whether a passage's metadata satisfies a ``where`` filter: field equality, ``$eq``, ``$ne``,
    ``$in``, ``$nin``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, and ``$and`` / ``$or`` of filters."""
    if not where:
        return True
    for key, condition in where.items():
        if key == "$and":
            if not all(matches(metadata, part) for part in condition):
                return False
        elif key == "$or":
            if not any(matches(metadata, part) for part in condition):
                return False
        elif not _holds(metadata.get(key), condition):
            return False
    return True


_OPERATORS = {
    "$eq": lambda value, operand: value == operand,
    "$ne": lambda value, operand: value != operand,
    "$in": lambda value, operand: value in operand,
    "$nin": lambda value, operand: value not in operand,
    "$gt": lambda value, operand: value is not None and value > operand,
    "$gte": lambda value, operand: value is not None and value >= operand,
    "$lt": lambda value, operand: value is not None and value < operand,
    "$lte": lambda value, operand: value is not None and value <= operand,
}


def _holds(value: Any, condition: Any) -> bool:
    if not isinstance(condition, dict):
        return value == condition
    unknown = set(condition) - set(_OPERATORS)
    if unknown:
        raise ValueError(f"unsupported filter operator(s) {sorted(unknown)}; supported: {sorted(_OPERATORS)}")
    return all(_OPERATORS[op](value, operand) for op, operand in condition.items())


@dataclass
class LexicalIndex:
    """BM25 over a fixed list of passages."""

    hits: list[Hit]  # score unset: each passage as the store holds it
    _bm25: Any = None
    _stemmer: Any = None

    @classmethod
    def from_store(cls, store: VectorStore) -> LexicalIndex:
        clock = time.perf_counter()
        index = cls([Hit(id=i, score=0.0, text=text, metadata=meta) for i, text, meta in store.scan()])
        index._build()
        log.info("lexical index: %d passages from %s in %.2f s", len(index.hits), store.location,
                 time.perf_counter() - clock)
        return index

    def _build(self) -> None:
        import bm25s
        import Stemmer

        self._stemmer = Stemmer.Stemmer("english")
        if not self.hits:
            return
        corpus = [hit.searchable_text for hit in self.hits]
        self._bm25 = bm25s.BM25()
        self._bm25.index(bm25s.tokenize(corpus, stopwords="en", stemmer=self._stemmer, show_progress=False),
                         show_progress=False)

    def search(self, question: str, k: int, where: Filter | None = None) -> list[Hit]:
        """The ``k`` passages with the highest BM25 score for ``question`` (score > 0: at least one
        of its terms), best first, among those ``where`` lets through."""
        import bm25s

        if self._bm25 is None:
            return []
        mask = None
        if where:
            mask = np.array([matches(hit.metadata, where) for hit in self.hits], dtype=np.float32)
            if not mask.any():
                return []
        terms = bm25s.tokenize([question], stopwords="en", stemmer=self._stemmer, show_progress=False,
                               return_ids=False)
        if not terms[0]:
            return []
        found, scores = self._bm25.retrieve(terms, k=min(k, len(self.hits)), weight_mask=mask, show_progress=False)
        return [Hit(id=self.hits[i].id, score=float(score), text=self.hits[i].text, metadata=self.hits[i].metadata)
                for i, score in zip(found[0], scores[0]) if score > 0]


def reciprocal_rank_fusion(rankings: list[list[Hit]], k: int = 60) -> list[Hit]:
    """One ranking from several (Cormack et al., 2009): each passage scores the sum of
    1 / (k + rank) over the rankings it is in; ``Hit.score`` becomes that sum."""
    scores: dict[str, float] = {}
    first_seen: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
            first_seen.setdefault(hit.id, hit)
    ordered = sorted(scores, key=lambda hit_id: -scores[hit_id])
    return [Hit(id=i, score=scores[i], text=first_seen[i].text, metadata=first_seen[i].metadata) for i in ordered]
