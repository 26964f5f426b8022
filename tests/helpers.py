"""Run documents through the stages as a batch, the way the Ray jobs would, for unit tests."""

from __future__ import annotations

from pathlib import Path

from include.documents import DocumentRef, describe
from include.ingest import STAGE_ORDER
from include.settings import PipelineSettings
from include.stages import STAGES
from include.stages.base import BatchResult, StageInput, StageManifest, run_stage
from include.stages.execution import run_inline
from include.storage import Storage, join_uri


def drop(settings: PipelineSettings, path: Path, name: str | None = None) -> DocumentRef:
    """Put a file into the inbox and describe it, as discovery would."""
    storage = Storage(settings)
    uri = join_uri(settings.inbox_uri, name or path.name)
    storage.write_bytes(uri, path.read_bytes())
    return describe(storage, uri)


def run_batch(
    settings: PipelineSettings, documents: list[DocumentRef], last: str = "load", executor=run_inline, **options
) -> dict[str, BatchResult]:
    """Every stage up to ``last`` over the batch; each takes the documents its upstream passed."""
    storage = Storage(settings)
    results: dict[str, BatchResult] = {}
    items = [StageInput(document) for document in documents]
    for stage in STAGE_ORDER[: STAGE_ORDER.index(last) + 1]:
        result = run_stage(STAGES[stage], settings, items, batch_id="batch-test", executor=executor, **options)
        results[stage] = result
        items = []
        for outcome in result.succeeded:
            manifest = StageManifest.model_validate(storage.read_json(outcome.manifest_uri))
            items.append(StageInput(manifest.document, manifest, outcome.manifest_uri))
    return results


def manifests(settings: PipelineSettings, results: dict[str, BatchResult], doc_id: str) -> dict[str, StageManifest]:
    """One document's manifest per stage it went through."""
    storage = Storage(settings)
    found = {}
    for stage, result in results.items():
        for outcome in result.documents:
            if outcome.doc_id == doc_id:
                found[stage] = StageManifest.model_validate(storage.read_json(outcome.manifest_uri))
    return found


def run_until(settings: PipelineSettings, document: DocumentRef, last: str, **options) -> dict[str, StageManifest]:
    """One document alone through the stages, in this process; its manifests by stage."""
    return manifests(settings, run_batch(settings, [document], last, **options), document.doc_id)
