"""Stage 3, enrich: every chunk is redacted of PII and annotated before anything is embedded.

Only the redacted text (and redacted heading) goes on: the embeddings and the vector
store never see the original. Chunks are enriched in parts of ``PIPELINE_CHUNKS_PER_PART``, each part
through spaCy in one ``nlp.pipe`` pass. The metrics count each kind of redaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from include.backends.enrichers import build_enricher
from include.backends.openai_api import Usage
from include.settings import PipelineSettings
from include.stages.base import AssembleContext, ChunkRows, DocInput, Metrics, Outputs, Part, chunk_parts
from include.stages.chunk import HEADING_SEPARATOR

split = chunk_parts


class ChunkEnricher:
    def __init__(self, settings: PipelineSettings) -> None:
        self._enricher = build_enricher(settings)
        self._rows = ChunkRows(settings)

    def __call__(self, doc: DocInput, part: Part) -> dict[str, Any]:
        rows = self._rows(doc, part)
        results = self._enricher.enrich_many([row["text"] for row in rows])
        # A chunk's headings are embedded with it and travel as metadata: they are redacted too
        # (once per distinct heading).
        headings = sorted({heading for row in rows for heading in row["headings"]})
        heading_results = self._enricher.enrich_many(headings) if headings else []
        redacted = {heading: result.text for heading, result in zip(headings, heading_results)}
        return {
            "usage": asdict(Usage.total(result.usage for result in [*results, *heading_results])),
            "fallbacks": sum(result.fallback for result in [*results, *heading_results]),
            "rows": [
                {
                    **row,
                    "headings": [redacted[heading] for heading in row["headings"]],
                    "heading": HEADING_SEPARATOR.join(redacted[heading] for heading in row["headings"]),
                    "text": result.text,
                    "redactions": result.redactions,
                    "entities": result.entities,
                    "key_phrases": result.key_phrases,
                }
                for row, result in zip(rows, results)
            ],
        }


def assemble(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> tuple[Outputs, Metrics]:
    rows = [row for payload in payloads for row in payload["rows"]]
    redactions: Counter[str] = Counter()
    for row in rows:
        redactions.update(row["redactions"])
    uri = ctx.write_jsonl("chunks.jsonl", rows)
    # SAFETY_NET counts redactions already counted by kind: how many the safety net made.
    metrics: Metrics = {"chunks": len(rows), "redactions": sum(n for k, n in redactions.items() if k != "SAFETY_NET")}
    metrics.update({f"redactions_{kind.lower()}": n for kind, n in sorted(redactions.items())})
    # What an LLM enricher's calls cost (nothing for the local one); fallbacks: chunks the model
    # answered badly twice, enriched locally instead.
    metrics.update(Usage.total(p["usage"] for p in payloads).metrics(),
                   llm_fallbacks=sum(p["fallbacks"] for p in payloads))
    return {"chunks": uri}, metrics
