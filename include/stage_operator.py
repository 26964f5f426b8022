"""The operator that runs one ingest stage for one document as a Ray job."""

from __future__ import annotations

import json
import shlex
from typing import Any

from ray_operators.operators.ray_job import RayJobOperator

from include.ingest import runtime_env
from include.settings import get_settings
from include.stages import STAGES
from include.stages.base import manifest_uri


class PipelineStageOperator(RayJobOperator):
    """Runs ``python -m include.stages <stage>`` for one document as a Ray job.

    ``upstream`` is the document (first stage) or the previous stage's XCom.
    """

    template_fields = (*RayJobOperator.template_fields, "upstream")

    def __init__(self, *, stage: str, upstream: Any, **kwargs: Any) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        super().__init__(entrypoint="", runtime_env=None, **kwargs)
        self.stage = stage
        self.upstream = upstream

    def execute(self, context: Any) -> Any:
        upstream = self.upstream
        if isinstance(upstream, str):  # templated values may arrive as JSON text
            upstream = json.loads(upstream)
        doc_id = upstream["doc_id"]
        if "manifest_uri" in upstream:
            source = f"--upstream {shlex.quote(upstream['manifest_uri'])}"
        else:
            source = f"--document {shlex.quote(json.dumps(upstream, sort_keys=True))}"
        self.entrypoint = f"python -m include.stages {self.stage} {source}"
        self.result_uri = manifest_uri(get_settings(), STAGES[self.stage], doc_id)
        self.runtime_env = self.runtime_env or runtime_env()
        self.log.info("%s of %s", self.stage, upstream.get("source_uri", doc_id))
        return super().execute(context)

    def result_to_xcom(self, result: dict[str, Any]) -> dict[str, Any]:
        document = result["document"]
        return {
            "stage": result["stage"],
            "doc_id": document["doc_id"],
            "source_uri": document["source_uri"],
            "manifest_uri": self.result_uri,
            "outputs": result["outputs"],
            "metrics": result["metrics"],
        }
