"""The operator that runs one ingest stage over one batch of documents as a Ray job."""

from __future__ import annotations

import json
import shlex
from typing import Any

from ray_operators.operators.ray_job import RayJobOperator

from include.ingest import runtime_env, stage_result_prefix
from include.stages import STAGES
from include.stages.base import BatchResult


class PipelineStageOperator(RayJobOperator):
    """Runs ``python -m include.stages <stage>`` over one batch as a Ray job.

    ``upstream`` is the batch (first stage: its ``batch_uri``) or the previous stage's
    XCom (its ``result_uri``). The run's ``recompute`` param lists stages that must
    redo every document instead of reusing recorded results (``"all"``: every stage).
    """

    template_fields = (*RayJobOperator.template_fields, "upstream")

    def __init__(self, *, stage: str, upstream: Any, **kwargs: Any) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        super().__init__(entrypoint="", **kwargs)
        self.stage = stage
        self.upstream = upstream

    def execute(self, context: Any) -> Any:
        upstream = self.upstream
        if isinstance(upstream, str):  # templated values may arrive as JSON text
            upstream = json.loads(upstream)
        if "batch_uri" in upstream:
            source = f"--batch {shlex.quote(upstream['batch_uri'])}"
        else:
            source = f"--upstream {shlex.quote(upstream['result_uri'])}"
        recompute = (context.get("params") or {}).get("recompute") or []
        flag = " --recompute" if self.stage in recompute or "all" in recompute else ""
        self.entrypoint = f"python -m include.stages {self.stage} {source}{flag}"
        ti = context["ti"]
        self.result_prefix = stage_result_prefix(ti.dag_id, ti.run_id, upstream["batch_id"], self.stage)
        self.runtime_env = self.runtime_env or runtime_env()
        self.log.info("%s of %s", self.stage, upstream["batch_id"])
        return super().execute(context)

    def result_to_xcom(self, result: dict[str, Any]) -> dict[str, Any]:
        batch = BatchResult.model_validate(result)
        for outcome in batch.failed:
            self.log.warning("FAILED: %s: %s", outcome.source_uri, outcome.error)
        return {
            "stage": batch.stage,
            "batch_id": batch.batch_id,
            "result_uri": self.result_uri(batch.submission_id),
            "documents": len(batch.documents),
            "succeeded": len(batch.succeeded),
            "failed": len(batch.failed),
            "metrics": batch.metrics,
        }
