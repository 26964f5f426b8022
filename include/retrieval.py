"""Answer a question by retrieval: embed it with the ingest embedder, return the nearest chunks."""

from __future__ import annotations

from include.backends.embedders import build_embedder
from include.backends.vector_stores import Hit, build_vector_store
from include.settings import PipelineSettings, get_settings


def search(question: str, k: int = 3, settings: PipelineSettings | None = None) -> list[Hit]:
    settings = settings or get_settings()
    vector = build_embedder(settings).embed([question]).vectors[0]
    return build_vector_store(settings).query(vector.tolist(), k)


def format_hits(question: str, hits: list[Hit], width: int = 300) -> str:
    lines = [f"Q: {question}"]
    for rank, hit in enumerate(hits, 1):
        meta = hit.metadata
        pages = f"{meta['page_start']}" if meta["page_start"] == meta["page_end"] else f"{meta['page_start']}-{meta['page_end']}"
        source = str(meta["source_uri"]).rsplit("/", 1)[-1]
        passage = " ".join(hit.text.split())
        lines.append(f"  {rank}. [{hit.score:.3f}] {source}, page {pages} ({meta['heading'] or 'no heading'})")
        lines.append(f"     {passage[:width]}{'...' if len(passage) > width else ''}")
    return "\n".join(lines)
