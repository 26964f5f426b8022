"""Stage 3, enrich: every chunk is redacted of PII and annotated before anything is embedded.

Only the redacted text goes on: the embeddings and the vector store never see the
original. The metrics count each kind of redaction.
"""

from __future__ import annotations

from collections import Counter

from include.backends.enrichers import build_enricher
from include.stages.base import Metrics, Outputs, StageContext


def enrich(ctx: StageContext) -> tuple[Outputs, Metrics]:
    chunks = ctx.storage.read_jsonl(ctx.upstream_output("chunks"))
    enricher = build_enricher(ctx.settings)
    redactions: Counter[str] = Counter()
    rows = []
    for row in chunks:
        result = enricher.enrich(row["text"])
        redactions.update(result.redactions)
        rows.append(
            {
                **row,
                "text": result.text,
                "redactions": result.redactions,
                "entities": result.entities,
                "key_phrases": result.key_phrases,
            }
        )
    uri = ctx.output_uri("chunks.jsonl")
    ctx.storage.write_jsonl(uri, rows)
    metrics: Metrics = {"chunks": len(rows), "redactions": sum(redactions.values())}
    metrics.update({f"redactions_{kind.lower()}": n for kind, n in sorted(redactions.items())})
    return {"chunks": uri}, metrics
