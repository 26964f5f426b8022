"""Run documents through the stages in-process, as the Ray jobs would, for unit tests."""

from __future__ import annotations

from pathlib import Path

from include.documents import DocumentRef, describe
from include.ingest import STAGE_ORDER
from include.settings import PipelineSettings
from include.stages import STAGES
from include.stages.base import StageManifest, execute_stage, manifest_uri
from include.storage import Storage, join_uri


def drop(settings: PipelineSettings, path: Path, name: str | None = None) -> DocumentRef:
    """Put a file into the inbox and describe it, as discovery would."""
    storage = Storage(settings)
    uri = join_uri(settings.inbox_uri, name or path.name)
    storage.write_bytes(uri, path.read_bytes())
    return describe(storage, uri)


def run_until(settings: PipelineSettings, document: DocumentRef, last: str) -> dict[str, StageManifest]:
    manifests: dict[str, StageManifest] = {}
    upstream = None
    for stage in STAGE_ORDER[: STAGE_ORDER.index(last) + 1]:
        if upstream is None:
            manifests[stage] = execute_stage(STAGES[stage], settings, document=document)
        else:
            manifests[stage] = execute_stage(STAGES[stage], settings, upstream_manifest_uri=upstream)
        upstream = manifest_uri(settings, STAGES[stage], document.doc_id)
    return manifests
