"""Stage 4, embed: every enriched chunk gets a vector.

Chunks are embedded in parts of ``PIPELINE_CHUNKS_PER_PART`` on the embed actor pool
(the model loads once per actor), ``PIPELINE_EMBED_BATCH_SIZE`` texts per forward
pass. Output: one Parquet file per document with the chunk's redacted text,
metadata and vector.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

from include.backends.embedders import build_embedder
from include.backends.openai_api import Usage
from include.settings import PipelineSettings
from include.stages.base import AssembleContext, ChunkRows, DocInput, Metrics, Outputs, Part, chunk_parts
from include.stages.chunk import embedding_text

_COLUMNS = ("chunk_id", "doc_id", "chunk_no", "text", "page_start", "page_end", "heading", "source_uri",
            "content_sha256")


split = chunk_parts


class ChunkEmbedder:
    def __init__(self, settings: PipelineSettings) -> None:
        self._embedder = build_embedder(settings)
        self._rows = ChunkRows(settings)

    def __call__(self, doc: DocInput, part: Part) -> dict[str, Any]:
        rows = self._rows(doc, part)
        result = self._embedder.embed([embedding_text(row) for row in rows])
        return {"usage": asdict(result.usage), "rows": [
            {
                **{name: row[name] for name in _COLUMNS},
                "entities": json.dumps(row["entities"], sort_keys=True),
                "key_phrases": json.dumps(row["key_phrases"]),
                "vector": vector.tolist(),
                "tokens": tokens,
                "windows": windows,
            }
            for row, vector, tokens, windows in zip(rows, result.vectors, result.tokens, result.windows)
        ]}


def assemble(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> tuple[Outputs, Metrics]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row for payload in payloads for row in payload["rows"]]
    columns = {name: [row[name] for row in rows] for name in (*_COLUMNS, "entities", "key_phrases")}
    columns["vector"] = pa.array([row["vector"] for row in rows], type=pa.list_(pa.float32()))
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    uri = ctx.write("embeddings.parquet", sink.getvalue())
    return {"embeddings": uri}, {
        "vectors": len(rows),
        "dimension": len(rows[0]["vector"]) if rows else 0,
        "tokens": sum(row["tokens"] for row in rows),
        "windowed_chunks": sum(row["windows"] > 1 for row in rows),
        # What a paid API charged (zero for a local model).
        **Usage.total(payload["usage"] for payload in payloads).metrics(),
    }
