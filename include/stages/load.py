"""Stage 5, load: upsert a document's vectors into the vector store.

Ids are ``<doc_id>#<chunk_no>``, so loading the same document again overwrites
its vectors instead of adding new ones. Once every part is upserted, every other
vector of the same source object is removed: those of an older version of the
file (another doc id), and those of chunk numbers a new chunking no longer makes.
A replaced or re-chunked file never leaves stale passages behind. Before each write and
before that delete, the inbox must still hold the version being loaded (``check_current``):
an old run's load never overwrites or deletes a newer version's vectors.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

from include.backends.embedders import embedder_info
from include.backends.vector_stores import (
    VectorRecord,
    process_vector_store,
    store_location,
    stored_document_name,
    stored_source_uri,
)
from include.settings import PipelineSettings
from include.stages.base import AssembleContext, DocInput, Metrics, Outputs, Part, check_current, ranges
from include.storage import Storage


def _read_table(storage: Storage, uri: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def split(doc: DocInput, settings: PipelineSettings) -> list[Part]:
    storage = Storage(settings)
    check_current(storage, doc.document)  # an old run's job: its inputs may be gone with its version
    count = _read_table(storage, doc.upstream_output("embeddings")).num_rows
    return ranges(count, settings.chunks_per_part)


class VectorLoader:
    def __init__(self, settings: PipelineSettings) -> None:
        self._store = process_vector_store(settings)
        self._settings = settings
        self._bound = False
        self._storage = storage = Storage(settings)
        self._read = lru_cache(maxsize=1)(lambda uri: _read_table(storage, uri).to_pylist())

    def __call__(self, doc: DocInput, part: Part) -> list[str]:
        check_current(self._storage, doc.document)  # a stale writer writes nothing
        rows = self._read(doc.upstream_output("embeddings"))[part["start"] : part["stop"]]
        if rows and not self._bound:
            # A store holds one embedder's vectors: another one's would make every search noise.
            self._store.bind_embedder(embedder_info(self._settings, len(rows[0]["vector"])))
            self._bound = True
        records = [
            VectorRecord(
                id=row["chunk_id"],
                vector=row["vector"],
                text=row["text"],
                metadata={
                    "doc_id": row["doc_id"],
                    "chunk_no": row["chunk_no"],
                    "source_uri": stored_source_uri(row["source_uri"], self._settings),
                    "document": stored_document_name(row["source_uri"]),  # the file's name: what a filter names
                    "content_sha256": row["content_sha256"],
                    "page_start": row["page_start"],
                    "page_end": row["page_end"],
                    "heading": row["heading"],
                    "entities": row["entities"],  # JSON text: Chroma takes scalars only
                    "key_phrases": row["key_phrases"],
                },
            )
            for row in rows
        ]
        self._store.upsert(records)
        return [record.id for record in records]


def assemble(ctx: AssembleContext, payloads: list[list[str]]) -> tuple[Outputs, Metrics]:
    # Through the job's validator: the workers hold clients, the driver opens none (``StoreAccess``).
    store = ctx.store()
    written = {chunk_id for payload in payloads for chunk_id in payload}
    # Again just before the delete: a newer version's vectors are never the stale ones removed.
    check_current(ctx.storage, ctx.document)
    removed = store.delete_stale(ctx.document.source_uri, keep_ids=written)
    # What the store now holds of the document is the load gate's to check (a read-back of every record).
    return {"vector_store": store_location(ctx.settings)}, {"vectors": len(written), "stale_vectors_removed": removed}
