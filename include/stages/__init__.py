"""The five ingest stages. Plain Python: no Airflow import anywhere under this package.

Run one from a shell (this is what each Ray job does)::

    python -m include.stages extract --document '{"doc_id": ..., "source_uri": ...}'
    python -m include.stages chunk --upstream s3://.../extracted/<doc_id>/_manifest.json
"""

from __future__ import annotations

from include.stages.base import Stage
from include.stages.chunk import chunk
from include.stages.embed import embed
from include.stages.enrich import enrich
from include.stages.extract import extract
from include.stages.load import load

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "extract",
            "extracted",
            extract,
            ("docling_artifacts_path",),
            libraries=("docling", "docling-core", "docling-parse"),
        ),
        Stage("chunk", "chunks", chunk, ("chunk_target_chars",)),
        Stage(
            "enrich",
            "enriched",
            enrich,
            ("enricher", "spacy_model", "pii_entities", "pii_score_threshold", "key_phrases_per_chunk"),
            code_modules=("include.backends.enrichers",),
            libraries=("presidio-analyzer", "spacy", "yake", "drug-named-entity-recognition"),
        ),
        Stage(
            "embed",
            "embeddings",
            embed,
            ("embedder", "embed_model"),
            runs_in_driver=True,
            code_modules=("include.backends.embedders",),
            libraries=("sentence-transformers", "torch"),
        ),
        Stage(
            "load",
            "loaded",
            load,
            ("vector_store", "chroma_path", "chroma_collection"),
            reusable=False,
        ),
    )
}
