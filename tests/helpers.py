"""Run documents through the stages as a batch, the way the Ray jobs would, for unit tests."""

from __future__ import annotations

from pathlib import Path

from include.documents import DocumentRef, describe
from include.settings import PipelineSettings
from include.stages.base import BatchResult, StageManifest
from include.stages.local import run_stages
from include.storage import Storage, join_uri


def drop(settings: PipelineSettings, path: Path, name: str | None = None) -> DocumentRef:
    """Put a file into the inbox and describe it, as discovery would."""
    storage = Storage(settings)
    uri = join_uri(settings.inbox_uri, name or path.name)
    storage.write_bytes(uri, path.read_bytes())
    return describe(storage, uri)


def manifests_of(settings: PipelineSettings, results: dict[str, BatchResult], doc_id: str) -> dict[str, StageManifest]:
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
    return manifests_of(settings, run_stages(settings, [document], last, **options), document.doc_id)
