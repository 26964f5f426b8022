"""Each stage's quality gate: the checks of one document's output, built from what its stage's
workers returned (``Stage.gate``) once the document's outputs are assembled, and validated in the
stage's job together with the documents finished about the same time (``include.stages.base``).

The gates live here, not in the stage modules: a gate checks an output, it does not shape it, so
changing one must not make every ingested document stale (a stage's fingerprint covers its module's
code: ``include.fingerprints``). GX is imported on first use (the suites): importing the stages
(every worker does) does not pay for it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from include.settings import PipelineSettings

if TYPE_CHECKING:
    from include.backends.vector_stores import VectorStore
    from include.quality.expectations import Checks
    from include.stages.base import AssembleContext


def _rows(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for payload in payloads for row in payload["rows"]]


def chunk(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> Checks:
    from include.quality import suites

    return suites.chunk_checks(_rows(payloads), doc_id=ctx.document.doc_id,
                               token_limit=payloads[0]["token_limit"],
                               pages=int(ctx.upstream_metrics["pages"]), settings=ctx.settings)


def enrich(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> Checks:
    from include.quality import suites

    return suites.enrich_checks(_rows(payloads), doc_id=ctx.document.doc_id, settings=ctx.settings)


def embed(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> Checks:
    """Against the dimension of the store the vectors go to, once it has one (the load binds it to the
    first embedder that writes to it)."""
    from include.quality import suites

    bound = vector_store(ctx.settings).embedder()
    return suites.embed_checks(_rows(payloads), doc_id=ctx.document.doc_id,
                               dimension=bound.dimension if bound else None, settings=ctx.settings)


def load(ctx: AssembleContext, payloads: list[list[str]]) -> Checks:
    """The document's records as the store shows them once they are the ones written, or as it shows
    them after ``load_settle_seconds`` (an eventually consistent store may lag behind its writes)."""
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

    from include.quality import suites

    written = {chunk_id for payload in payloads for chunk_id in payload}
    read = Retrying(stop=stop_after_delay(ctx.settings.quality.load_settle_seconds), wait=wait_fixed(0.5),
                    retry=retry_if_result(lambda records: set(records) != written),
                    retry_error_callback=lambda state: state.outcome.result())  # the last reading, not an error
    stored = read(vector_store(ctx.settings).document_records, ctx.document.doc_id)
    return suites.load_checks(stored, written=written, doc_id=ctx.document.doc_id)


@lru_cache(maxsize=1)
def vector_store(settings: PipelineSettings) -> VectorStore:
    from include.backends.vector_stores import build_vector_store

    return build_vector_store(settings)
