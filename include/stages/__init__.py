"""The five ingest stages. Plain Python: no Airflow import anywhere under this package.

Each stage runs over a batch of documents (``python -m include.stages --help``): this is
what each Ray job the DAG submits does. What shapes each stage's output (its settings,
code and libraries) is declared in ``include.fingerprints``, which the Airflow side reads
without importing this package.
"""

from __future__ import annotations

from include.fingerprints import SPECS
from include.quality import gates
from include.stages import chunk, embed, enrich, extract, load
from include.stages.base import Stage, StoreCheckFailed

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            SPECS["extract"], "extracted", extract.split, extract.PageConverter, extract.assemble,
            pool="extract_pool", unit="pages",
            runs=lambda s: "docling-parse and pdfium" + (f", {s.describe_model}" if s.describe_pictures else ""),
            pays=lambda s: s.describe_pictures,
        ),
        Stage(
            SPECS["chunk"], "chunks", chunk.split, chunk.Chunker, chunk.assemble,
            pool="chunk_pool", unit=None,
            runs=lambda s: f"HybridChunker with the {s.embedder} tokenizer", gate=gates.chunk,
        ),
        Stage(
            SPECS["enrich"], "enriched", enrich.split, enrich.ChunkEnricher, enrich.assemble,
            pool="enrich_pool",
            runs=lambda s: (f"Presidio and spaCy {s.spacy_model}" if s.enricher == "local"
                            else f"{s.enrich_model} over the OpenAI API"),
            pays=lambda s: s.enricher == "openai", gate=gates.enrich,
        ),
        Stage(
            SPECS["embed"], "embeddings", embed.split, embed.ChunkEmbedder, embed.assemble,
            pool="embed_pool",
            runs=lambda s: f"{s.embedder_model} " + ("on torch" if s.embedder == "minilm" else "over the OpenAI API"),
            pays=lambda s: s.embedder == "openai", gate=gates.embed,
        ),
        Stage(
            SPECS["load"], "loaded", load.split, load.VectorLoader, load.assemble,
            pool="load_pool", reusable=False,
            runs=lambda s: f"the {s.vector_store} client", gate=gates.load, gate_failure=StoreCheckFailed,
        ),
    )
}
