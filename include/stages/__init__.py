"""The five ingest stages. Plain Python: no Airflow import anywhere under this package.

Each stage runs over a batch of documents (``python -m include.stages --help``): this is
what each Ray job the DAG submits does. What shapes each stage's output (its settings,
code and libraries) is declared in ``include.fingerprints``, which the Airflow side reads
without importing this package.

``STAGES`` imports a stage's module when the stage is first looked up: a stage job's driver
imports its own stage, not all five (extract's Docling types alone take 0.4 s to import, a
tenth of a small drop's stage job).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from include.fingerprints import SPECS, STAGE_ORDER
from include.stages.base import Stage, StoreCheckFailed


def _extract() -> Stage:
    from include.stages import extract

    return Stage(
        SPECS["extract"], "extracted", extract.split, extract.PageConverter, extract.assemble,
        pool="extract_pool", unit="pages",
        runs=lambda s: "docling-parse and pdfium" + (f", {s.describe_model}" if s.describe_pictures else ""),
        pays=lambda s: s.describe_pictures,
    )


def _chunk() -> Stage:
    from include.quality import gates
    from include.stages import chunk

    return Stage(
        SPECS["chunk"], "chunks", chunk.split, chunk.Chunker, chunk.assemble,
        pool="chunk_pool", unit=None,
        runs=lambda s: f"HybridChunker with the {s.embedder} tokenizer", gate=gates.chunk,
    )


def _enrich() -> Stage:
    from include.quality import gates
    from include.stages import enrich

    return Stage(
        SPECS["enrich"], "enriched", enrich.split, enrich.ChunkEnricher, enrich.assemble,
        pool="enrich_pool",
        runs=lambda s: (f"Presidio and spaCy {s.spacy_model}" if s.enricher == "local"
                        else f"{s.enrich_model} over the OpenAI API"),
        pays=lambda s: s.enricher == "openai", gate=gates.enrich,
    )


# How an error names the local embedder's runtime (``PIPELINE_EMBED_RUNTIME``).
_RUNTIMES = {"onnx": "ONNX Runtime", "torch": "torch", "torch-bf16": "torch in bfloat16"}


def _embed() -> Stage:
    from include.quality import gates
    from include.stages import embed

    return Stage(
        SPECS["embed"], "embeddings", embed.split, embed.ChunkEmbedder, embed.assemble,
        pool="embed_pool",
        runs=lambda s: f"{s.embedder_model} " + (f"on {_RUNTIMES[s.embed_runtime]}" if s.embedder == "minilm"
                                                  else "over the OpenAI API"),
        pays=lambda s: s.embedder == "openai", gate=gates.embed,
    )


def _load() -> Stage:
    from include.quality import gates
    from include.stages import load

    return Stage(
        SPECS["load"], "loaded", load.split, load.VectorLoader, load.assemble,
        pool="load_pool", reusable=False,
        runs=lambda s: f"the {s.vector_store} client", gate=gates.load, gate_failure=StoreCheckFailed,
        uses_store=True,
    )


class _Stages(Mapping[str, Stage]):
    """The stages by name, in their order, each built (its module imported) on first lookup."""

    def __init__(self, build: dict[str, Callable[[], Stage]]) -> None:
        self._build = build
        self._built: dict[str, Stage] = {}

    def __getitem__(self, name: str) -> Stage:
        if name not in self._built:
            self._built[name] = self._build[name]()
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build)

    def __len__(self) -> int:
        return len(self._build)


STAGES: Mapping[str, Stage] = _Stages(dict(zip(STAGE_ORDER, (_extract, _chunk, _enrich, _embed, _load))))
