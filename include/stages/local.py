"""Every stage over a batch from one Python process: the tests' path and the benchmark's baseline.

In production each stage is its own Ray job (``python -m include.stages``); here the
same ``run_stage`` calls follow each other, each stage taking the documents that
succeeded in the one before, as the DAG passes them along (none: the rest is skipped).
"""

from __future__ import annotations

from include.contract import BatchResult, DocumentRef, StageManifest
from include.settings import PipelineSettings
from include.stages import STAGES
from include.stages.base import Executor, StageInput, first_stage_inputs, run_stage
from include.stages.execution import run_inline
from include.storage import Storage


def run_stages(
    settings: PipelineSettings,
    documents: list[DocumentRef],
    last: str = "load",
    *,
    executor: Executor = run_inline,
    recompute: bool = False,
    batch_id: str = "local",
    ingested_sha256: dict[str, str] | None = None,
) -> dict[str, BatchResult]:
    storage = Storage(settings)
    order = tuple(STAGES)
    results: dict[str, BatchResult] = {}
    items, settled = first_stage_inputs(storage, documents, ingested_sha256 or {})
    for stage in order[: order.index(last) + 1]:
        result = run_stage(STAGES[stage], settings, items, batch_id=batch_id, executor=executor, recompute=recompute,
                           settled=settled)
        results[stage], settled = result, []
        items = []
        for outcome in result.succeeded:
            manifest = StageManifest.model_validate(storage.read_json(outcome.manifest_uri))
            items.append(StageInput(manifest.document, manifest, outcome.manifest_uri))
        if not items:
            break  # as in the DAG: a stage with nothing to work on runs no job
    return results
