"""Each stage's quality gate: the checks of each document's output, built from what its stage's
workers returned (``Stage.gate``) for the documents a stage job finished about the same time, once
their outputs are assembled, and validated together (``include.stages.base``). What a gate reads of
the store (its dimension, what the load wrote) is read once for them, through ``Store``.

The gates live here, not in the stage modules: a gate checks an output, it does not shape it, so
changing one must not make every ingested document stale (a stage's fingerprint covers its module's
code: ``include.fingerprints``). GX is imported on first use (the suites): importing the stages
(every worker does) does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.quality.expectations import Checks
    from include.stages.base import AssembleContext, Store


# The documents a gate checks together: each one's context and its workers' payloads.
Documents = list[tuple["AssembleContext", list[Any]]]


def _rows(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for payload in payloads for row in payload["rows"]]


def chunk(documents: Documents, store: Store) -> list[Checks]:
    from include.quality import suites

    return [suites.chunk_checks(_rows(payloads), doc_id=ctx.document.doc_id,
                                token_limit=payloads[0]["token_limit"], pages=int(ctx.upstream_metrics["pages"]),
                                settings=ctx.settings)
            for ctx, payloads in documents]


def enrich(documents: Documents, store: Store) -> list[Checks]:
    from include.quality import suites

    return [suites.enrich_checks(_rows(payloads), doc_id=ctx.document.doc_id, settings=ctx.settings)
            for ctx, payloads in documents]


def embed(documents: Documents, store: Store) -> list[Checks]:
    """Against the dimension of the store the vectors go to, once it has one (the load binds it to the
    first embedder that writes to it): read once for the documents."""
    from include.quality import suites

    bound = store().embedder() if documents else None
    return [suites.embed_checks(_rows(payloads), doc_id=ctx.document.doc_id,
                                dimension=bound.dimension if bound else None, settings=ctx.settings)
            for ctx, payloads in documents]


def load(documents: Documents, store: Store) -> list[Checks]:
    """The documents' records as the store shows them, in one read, once they are the ones written, or
    as it shows them after ``load_settle_seconds`` (an eventually consistent store may lag behind its
    writes)."""
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

    from include.quality import suites

    if not documents:
        return []
    settings = documents[0][0].settings
    written = {ctx.document.doc_id: {chunk_id for payload in payloads for chunk_id in payload}
               for ctx, payloads in documents}

    def lagging(stored: dict[str, dict[str, Any]]) -> bool:
        return any(set(stored.get(doc_id, {})) != ids for doc_id, ids in written.items())

    read = Retrying(stop=stop_after_delay(settings.quality.load_settle_seconds), wait=wait_fixed(0.5),
                    retry=retry_if_result(lagging),
                    retry_error_callback=lambda state: state.outcome.result())  # the last reading, not an error
    stored = read(store().documents_records, list(written))
    return [suites.load_checks(stored.get(doc_id, {}), written=ids, doc_id=doc_id)
            for doc_id, ids in written.items()]


