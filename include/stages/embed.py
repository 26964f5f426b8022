"""Stage 4, embed: every enriched chunk gets a vector, on a Ray Data actor pool.

The model loads once per actor (``PIPELINE_EMBED_ACTORS`` of them), and batches of
``PIPELINE_EMBED_BATCH_SIZE`` chunks stream through the pool. Output: one Parquet
file with the chunk's redacted text, metadata and vector.
"""

from __future__ import annotations

import io
import json

import numpy as np

from include.backends.embedders import build_embedder
from include.settings import PipelineSettings
from include.stages.base import Metrics, Outputs, StageContext


class EmbedBatch:
    """Ray Data callable class: holds one loaded model for the life of the actor."""

    def __init__(self, settings: PipelineSettings) -> None:
        self._embedder = build_embedder(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._embedder.embed([str(t) for t in batch["text"]])
        return {
            "chunk_id": batch["chunk_id"],
            "vector": result.vectors,
            "tokens": np.asarray(result.tokens),
            "windows": np.asarray(result.windows),
        }


def embed(ctx: StageContext) -> tuple[Outputs, Metrics]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    settings = ctx.settings
    rows = ctx.storage.read_jsonl(ctx.upstream_output("chunks"))
    dataset = ray.data.from_items([{"chunk_id": r["chunk_id"], "text": r["text"]} for r in rows])
    embedded = dataset.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"settings": settings},
        batch_size=settings.embed_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.embed_actors),
        num_cpus=settings.embed_actor_cpus,
    ).take_all()
    by_id = {item["chunk_id"]: item for item in embedded}
    if set(by_id) != {r["chunk_id"] for r in rows}:
        raise RuntimeError(f"{ctx.document.source_uri}: the embedder returned {len(by_id)} of {len(rows)} chunks")

    vectors = [np.asarray(by_id[r["chunk_id"]]["vector"], dtype=np.float32) for r in rows]
    table = pa.table(
        {
            "chunk_id": [r["chunk_id"] for r in rows],
            "doc_id": [r["doc_id"] for r in rows],
            "chunk_no": [r["chunk_no"] for r in rows],
            "text": [r["text"] for r in rows],
            "page_start": [r["page_start"] for r in rows],
            "page_end": [r["page_end"] for r in rows],
            "heading": [r["heading"] for r in rows],
            "source_uri": [r["source_uri"] for r in rows],
            "content_sha256": [r["content_sha256"] for r in rows],
            "entities": [json.dumps(r["entities"], sort_keys=True) for r in rows],
            "key_phrases": [json.dumps(r["key_phrases"]) for r in rows],
            "vector": pa.array([v.tolist() for v in vectors], type=pa.list_(pa.float32())),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    uri = ctx.output_uri("embeddings.parquet")
    ctx.storage.write_bytes(uri, sink.getvalue())
    return {"embeddings": uri}, {
        "vectors": len(vectors),
        "dimension": int(vectors[0].shape[0]) if vectors else 0,
        "tokens": sum(int(item["tokens"]) for item in embedded),
        "windowed_chunks": sum(int(item["windows"]) > 1 for item in embedded),
        "actors": settings.embed_actors,
    }
