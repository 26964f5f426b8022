"""Stage 2, chunk: the DoclingDocument becomes chunks the embedder reads whole, with docling-core's HybridChunker.

Why ``HybridChunker``: it starts from the document's structure (one piece per paragraph, list or
table, each under the path of section headings above it, as ``HierarchicalChunker`` gives), then
makes every piece fit the embedder: a piece over the limit is split (a table by rows with its
header row repeated, text by ``semchunk`` at sentence and word boundaries), and neighbours under
the same headings are merged up to the limit. Token counts come from the configured embedder's
own tokenizer and limit (``include.backends.embedders.chunk_tokenizer``): MiniLM's word pieces
and the 256 it reads (less its two special tokens), or an OpenAI model's tiktoken encoding and
``PIPELINE_CHUNK_MAX_TOKENS`` (about 1,500 characters by default). ``HierarchicalChunker`` alone
would leave long sections over the limit; a fixed character size would cut through tables and
headings, and says nothing of what the embedder reads.

The limit holds for what is embedded: the heading path and the text (``embedding_text``, the
same string as the chunker's ``contextualize``). Tables are Markdown, so a split table is still
a table. A chunk that passes the limit all the same is counted (``chunks_over_limit``) and logged:
it would be embedded as an average of windows, which blurs it.

Each row: ids, the chunk's own text, its heading path (``headings``, and ``heading`` joined for
display and citations), its page span, and its tokens.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from include.backends.embedders import chunk_tokenizer
from include.settings import PipelineSettings
from include.stages.base import AssembleContext, DocInput, Metrics, Outputs, Part
from include.storage import Storage

log = logging.getLogger(__name__)

HEADING_SEPARATOR = " > "


def embedding_text(row: dict[str, Any]) -> str:
    """What the embedder reads of a chunk: its heading path, then its text, one per line (as
    ``HybridChunker.contextualize`` joins them, the string its token limit was kept on)."""
    return "\n".join([*row.get("headings", []), row["text"]])


def split(doc: DocInput, settings: PipelineSettings) -> list[Part]:
    """Chunking reads a whole document at once: it is cheap, and headings carry over pages."""
    return [{}]


class Chunker:
    def __init__(self, settings: PipelineSettings) -> None:
        from docling_core.transforms.chunker.hierarchical_chunker import (
            ChunkingDocSerializer,
            ChunkingSerializerProvider,
        )
        from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
        from docling_core.transforms.serializer.markdown import MarkdownTableSerializer

        class MarkdownTables(ChunkingSerializerProvider):
            """Tables as compact Markdown (not "row, column = value" triplets): read well by people,
            LLMs and embedders, and split by rows with the header repeated. Compact: the padding
            and the dashes of an aligned table would spend the embedder's word pieces on nothing."""

            def get_serializer(self, doc):
                params = ChunkingDocSerializer.model_fields["params"].default.model_copy(
                    update={"compact_tables": True})
                return ChunkingDocSerializer(doc=doc, table_serializer=MarkdownTableSerializer(), params=params)

        self._storage = Storage(settings)
        self._tokenizer = chunk_tokenizer(settings)
        self._chunker = HybridChunker(tokenizer=self._tokenizer, serializer_provider=MarkdownTables())

    def __call__(self, doc: DocInput, part: Part) -> dict[str, Any]:
        from docling_core.types.doc import DoclingDocument

        ref = doc.document
        document = DoclingDocument.model_validate_json(self._storage.read_text(doc.upstream_output("document")))
        rows = []
        for chunk in self._chunker.chunk(document):
            pages = sorted({prov.page_no for item in chunk.meta.doc_items for prov in item.prov})
            headings = list(chunk.meta.headings or [])
            row = {
                "chunk_id": f"{ref.doc_id}#{len(rows)}",
                "doc_id": ref.doc_id,
                "chunk_no": len(rows),
                "text": chunk.text,
                "headings": headings,
                "heading": HEADING_SEPARATOR.join(headings),
                "page_start": pages[0] if pages else 1,
                "page_end": pages[-1] if pages else 1,
                "source_uri": ref.source_uri,
                "content_sha256": ref.content_sha256,
            }
            row["tokens"] = self._tokenizer.count_tokens(embedding_text(row))
            rows.append(row)
        limit = self._tokenizer.get_max_tokens()
        for row in rows:
            if row["tokens"] > limit:
                log.warning("%s: chunk %s has %d tokens, over the embedder's %d", ref.source_uri, row["chunk_no"],
                            row["tokens"], limit)
        return {"rows": rows, "token_limit": limit}


def assemble(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> tuple[Outputs, Metrics]:
    rows = [row for payload in payloads for row in payload["rows"]]
    limit = payloads[0]["token_limit"]
    tokens = sorted(row["tokens"] for row in rows)
    uri = ctx.write_jsonl("chunks.jsonl", rows)
    return {"chunks": uri}, {
        "chunks": len(rows),
        "characters": sum(len(row["text"]) for row in rows),
        "max_chunk_tokens": tokens[-1] if tokens else 0,
        "p95_chunk_tokens": tokens[int(0.95 * (len(tokens) - 1))] if tokens else 0,
        "mean_chunk_tokens": round(statistics.fmean(tokens), 1) if tokens else 0.0,
        "token_limit": limit,
        # Chunks the embedder cannot read whole: a bug, reported rather than hidden.
        "chunks_over_limit": sum(token_count > limit for token_count in tokens),
    }
