"""The five ingest stages. Plain Python: no Airflow import anywhere under this package.

Each stage runs over a batch of documents (``python -m include.stages --help``): this is
what each Ray job the DAG submits does.
"""

from __future__ import annotations

from include.settings import PipelineSettings
from include.stages import chunk, embed, enrich, extract, load
from include.stages.base import Stage, stage_fingerprint

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "extract",
            "extracted",
            extract.split,
            extract.PageConverter,
            extract.assemble,
            ("docling_artifacts_path", "describe_pictures", "describe_model", "describe_max_tokens",
             "describe_min_points"),
            pool="extract_pool",
            unit="pages",
            code_modules=("include.stages.layout", "include.backends.describers", "include.backends.openai_api"),
            libraries=("docling", "docling-core", "docling-parse", "pypdfium2"),
            runs=lambda s: "docling-parse and pdfium" + (f", {s.describe_model}" if s.describe_pictures else ""),
        ),
        Stage(
            "chunk",
            "chunks",
            chunk.split,
            chunk.Chunker,
            chunk.assemble,
            # The embedder's tokenizer bounds the chunks.
            ("chunk_max_tokens", "embedder", "embed_model", "openai_embed_model"),
            pool="chunk_pool",
            unit=None,
            code_modules=("include.backends.embedders",),
            libraries=("docling-core", "semchunk", "transformers", "tiktoken"),
            runs=lambda s: f"HybridChunker with the {s.embedder} tokenizer",
        ),
        Stage(
            "enrich",
            "enriched",
            enrich.split,
            enrich.ChunkEnricher,
            enrich.assemble,
            ("enricher", "spacy_model", "pii_entities", "pii_score_threshold", "redact_people",
             "key_phrases_per_chunk", "enrich_model"),
            pool="enrich_pool",
            code_modules=("include.backends.enrichers", "include.backends.openai_api", "include.pii_shapes"),
            libraries=("presidio-analyzer", "spacy", "yake", "drug-named-entity-recognition", "phonenumbers"),
            runs=lambda s: (f"Presidio and spaCy {s.spacy_model}" if s.enricher == "local"
                            else f"{s.enrich_model} over the OpenAI API"),
        ),
        Stage(
            "embed",
            "embeddings",
            embed.split,
            embed.ChunkEmbedder,
            embed.assemble,
            ("embedder", "embed_model", "openai_embed_model", "embed_dimensions"),
            pool="embed_pool",
            code_modules=("include.backends.embedders",),
            libraries=("sentence-transformers", "torch", "openai"),
            runs=lambda s: (f"{s.embed_model} on torch" if s.embedder == "minilm"
                            else f"{s.openai_embed_model} over the OpenAI API"),
        ),
        Stage(
            "load",
            "loaded",
            load.split,
            load.VectorLoader,
            load.assemble,
            ("vector_store", "chroma_url", "chroma_path", "chroma_collection", "pinecone_index",
             "pinecone_namespace", "pinecone_host"),
            pool="load_pool",
            reusable=False,
            code_modules=("include.backends.vector_stores",),
            runs=lambda s: f"the {s.vector_store} client",
        ),
    )
}


def pipeline_fingerprint(settings: PipelineSettings) -> str:
    """What a document's vectors depend on: every stage's settings, code and libraries.

    Equal to the ``config_fingerprint`` the last stage's manifest records: a document
    ingested under another fingerprint is stale and goes through the stages again
    (each stage still reuses what its own fingerprint says is current).
    """
    return ".".join(stage_fingerprint(stage, settings) for stage in STAGES.values())
