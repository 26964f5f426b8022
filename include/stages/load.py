"""Stage 5, load: upsert a document's vectors into the vector store.

Ids are ``<doc_id>#<chunk_no>``, so loading the same document again overwrites
its vectors instead of adding new ones. Then every other vector of the same source
object is removed: those of an older version of the file (another doc id), and
those of chunk numbers a new chunking no longer makes. A replaced or re-chunked
file never leaves stale passages behind.
"""

from __future__ import annotations

import io

from include.backends.vector_stores import VectorRecord, build_vector_store
from include.stages.base import Metrics, Outputs, StageContext


def load(ctx: StageContext) -> tuple[Outputs, Metrics]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(ctx.storage.read_bytes(ctx.upstream_output("embeddings"))))
    records = [
        VectorRecord(
            id=row["chunk_id"],
            vector=row["vector"],
            text=row["text"],
            metadata={
                "doc_id": row["doc_id"],
                "chunk_no": row["chunk_no"],
                "source_uri": row["source_uri"],
                "content_sha256": row["content_sha256"],
                "page_start": row["page_start"],
                "page_end": row["page_end"],
                "heading": row["heading"],
                "entities": row["entities"],  # JSON text: Chroma takes scalars only
                "key_phrases": row["key_phrases"],
            },
        )
        for row in table.to_pylist()
    ]
    store = build_vector_store(ctx.settings)
    store.upsert(records)
    removed = store.delete_stale(ctx.document.source_uri, keep_ids={r.id for r in records})
    return {"vector_store": store.location}, {
        "vectors": len(records),
        "vectors_in_store_for_document": store.count(ctx.document.doc_id),
        "stale_vectors_removed": removed,
    }
