"""Run documents through the stages as a batch, the way the Ray jobs would, for unit tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from include.contract import BatchResult, DocumentRef, StageManifest
from include.documents import describe
from include.settings import PipelineSettings
from include.stages.base import StageInput
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


DAG_ID = "document_ingest"


def upgraded_ledger(settings) -> None:
    """The deploy step, for a test that plans runs in a work dir of its own."""
    from include.control.ledger.store import Ledger, default_url
    from include.control.settings import ControlSettings

    Ledger(default_url(ControlSettings(**settings.model_dump()))).upgrade()


def ingest_like_the_dag(run_id: str, *, keys: list[str] | None = None, reprocess: bool = False,
                        allow_mass_delete: bool = False, is_active=lambda dag_id, run_id: True) -> dict:
    """One ``document_ingest`` run in this process, task by task, with the stages run inline;
    the settings come from the environment, as in the DAG. A stage whose job fails for the
    infrastructure (``include.failures``) pushes no result and skips the later stages of its batch,
    as the DAG's failed task does; any other exception out of a job is a bug, and raised. Returns the
    run's summary."""
    from include.contract import BatchSpec, validations_uri
    from include.control import ingest
    from include.control.settings import get_control_settings
    from include.failures import is_infrastructure
    from include.stages import STAGES
    from include.stages.base import first_stage_inputs, run_stage
    from include.stages.execution import run_inline

    settings = get_control_settings()
    storage = Storage(settings)
    batches = ingest.plan_run(DAG_ID, run_id, keys, reprocess=reprocess, allow_mass_delete=allow_mass_delete,
                              is_active=is_active)
    results: dict[str, list[dict]] = {stage: [] for stage in ingest.STAGE_ORDER}
    for batch in batches:
        spec = BatchSpec.model_validate(storage.read_json(batch["batch_uri"]))
        items, settled = first_stage_inputs(storage, spec.documents, spec.ingested_sha256)
        budget = spec.budget_usd
        for stage in ingest.STAGE_ORDER:
            uri = join_uri(ingest.stage_result_prefix(DAG_ID, run_id, spec.batch_id, stage), "inline.json")
            try:
                result = run_stage(STAGES[stage], settings, items, batch_id=spec.batch_id, executor=run_inline,
                                   recompute=reprocess, settled=settled, budget_usd=budget,
                                   validations_uri=validations_uri(uri))
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                break
            storage.write_json(uri, result.model_dump(mode="json"))
            ingest.record_stage(run_id, result)
            results[stage].append({"result_uri": uri})
            budget = result.budget_usd_left
            items, settled = [StageInput(m.document, m, o.manifest_uri) for o, m in _manifests(storage, result)], []
            if not items:
                break
    summary = ingest.finish_run(DAG_ID, run_id, results)
    spec = ingest.prune_spec_uri(DAG_ID, run_id)
    if storage.exists(spec):
        from include.contract import PruneSpec
        from include.prune import prune

        ingest.record_prune(run_id, prune(PruneSpec.model_validate(storage.read_json(spec))))
    return summary


def _manifests(storage: Storage, result: BatchResult) -> list[tuple]:
    return [(o, StageManifest.model_validate(storage.read_json(o.manifest_uri))) for o in result.succeeded]


def task_instance(dag_id: str, run_id: str, task_id: str, *, try_number: int = 1, max_tries: int = 0,
                  map_index: int = 0) -> SimpleNamespace:
    """What an operator reads of its task instance when a test calls ``execute`` itself. ``max_tries``
    is what Airflow keeps: the task's retries, plus the try a user cleared (see the operator's rerun
    rule)."""
    return SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                           try_number=try_number, max_tries=max_tries, xcom_push=lambda **_: None)
