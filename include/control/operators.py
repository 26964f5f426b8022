"""The operators of ``document_ingest``'s Ray jobs: a stage over one batch, and the run's prune."""

from __future__ import annotations

import json
import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from ray_operators.operators.ray_job import RayJobOperator

from include.contract import BatchResult, PruneResult
from include.control.ingest import (
    prune_spec_uri,
    record_prune,
    record_stage,
    runtime_env,
    stage_result_prefix,
)
from include.control.settings import get_control_settings
from include.fingerprints import SPECS
from include.storage import Storage


class PipelineStageOperator(RayJobOperator):
    """Runs ``python -m include.stages <stage>`` over one batch as a Ray job.

    ``upstream`` is the batch (first stage: its ``batch_uri``) or the previous stage's
    XCom (its ``result_uri``). The run's ``recompute`` param lists stages that must
    redo every document instead of reusing recorded results (``"all"``: every stage);
    its ``reprocess`` param redoes every stage. Each document's outcome goes into the
    ledger as soon as the job's result is read. A stage whose upstream passed no document
    on is skipped: no job is submitted for nothing.
    """

    # The entrypoint and the result prefix follow from the batch and the run (``prepare``): only
    # what a user may template is templated.
    template_fields = ("upstream", "runtime_env")

    def __init__(self, *, stage: str, upstream: Any, **kwargs: Any) -> None:
        if stage not in SPECS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(SPECS)}")
        super().__init__(entrypoint="", **kwargs)
        self.stage = stage
        self.upstream = upstream

    def prepare(self, context: Any) -> None:
        upstream = self.upstream
        if isinstance(upstream, str):  # templated values may arrive as JSON text
            upstream = json.loads(upstream)
        if "batch_uri" in upstream:
            source = f"--batch {shlex.quote(upstream['batch_uri'])}"
        elif not upstream["succeeded"]:
            # Skipped like every later stage of the batch; the summary reads why from the results.
            raise AirflowSkipException(f"no document of {upstream['batch_id']} went through {upstream['stage']}: "
                                       "no job to run")
        else:
            source = f"--upstream {shlex.quote(upstream['result_uri'])}"
        params = context.get("params") or {}
        recompute = params.get("recompute") or []
        redo = params.get("reprocess") or self.stage in recompute or "all" in recompute
        flag = " --recompute" if redo else ""
        self.entrypoint = f"python -m include.stages {self.stage} {source}{flag}"
        ti = context["ti"]
        self.result_prefix = stage_result_prefix(ti.dag_id, ti.run_id, upstream["batch_id"], self.stage)
        self.runtime_env = self.runtime_env or runtime_env()
        self.log.info("%s of %s", self.stage, upstream["batch_id"])

    def result_to_xcom(self, result: dict[str, Any], context: Any) -> dict[str, Any]:
        batch = BatchResult.model_validate(result)
        record_stage(context["ti"].run_id, batch)
        for outcome in batch.failed:
            self.log.warning("FAILED: %s: %s", outcome.source_uri, outcome.error)
        for outcome in batch.postponed:
            self.log.warning("POSTPONED: %s", outcome.error)
        return {
            "stage": batch.stage,
            "batch_id": batch.batch_id,
            "result_uri": self.result_uri(batch.submission_id),
            "documents": len(batch.documents),
            "succeeded": len(batch.succeeded),
            "failed": len(batch.failed),
            "postponed": len(batch.postponed),
            "metrics": batch.metrics,
        }


class PruneVectorsOperator(RayJobOperator):
    """Runs ``python -m include.prune`` over the run's prune spec as a Ray job: the vectors of
    sources the run deleted or quarantined leave the store. No spec (nothing to prune, or the
    summary never got to write it) skips the task: no job is submitted. The sources are
    marked in the ledger only once the job has removed their vectors, so a failed prune is
    found again by the next run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(entrypoint="", **kwargs)

    template_fields = ("runtime_env",)

    def prepare(self, context: Any) -> None:
        ti = context["ti"]
        spec = prune_spec_uri(ti.dag_id, ti.run_id)
        if not Storage(get_control_settings()).exists(spec):
            raise AirflowSkipException("no source of this run lost its place in the inbox: nothing to prune")
        self.entrypoint = f"python -m include.prune --spec {shlex.quote(spec)}"
        self.result_prefix = spec.rsplit("/", 1)[0] + "/prune"
        self.runtime_env = self.runtime_env or runtime_env()

    def result_to_xcom(self, result: dict[str, Any], context: Any) -> dict[str, Any]:
        pruned = PruneResult.model_validate(result)
        record_prune(context["ti"].run_id, pruned)
        return {"result_uri": self.result_uri(pruned.submission_id), "metrics": pruned.metrics}
