"""What the ``document_ingest`` DAG does besides running stages, free of Airflow imports.

- ``plan_run``: the run's documents, in batches, written once per run;
- ``sensor_bucket`` / ``sensor_keys``: what the sensor waits for;
- ``runtime_env``: what every stage's Ray job ships with;
- ``summarize`` / ``format_summary``: per-stage totals of a run, and which documents
  failed where and why.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from include.batching import BatchSpec, RunPlan, plan_batches, read_plan, run_folder, write_plan
from include.documents import discover, key_uris
from include.settings import PROJECT_ROOT, get_settings
from include.stages import STAGES
from include.stages.base import BatchResult, DocumentOutcome
from include.storage import Storage, split_s3_uri

log = logging.getLogger(__name__)

STAGE_ORDER = tuple(STAGES)  # extract, chunk, enrich, embed, load
# What the summary shows per stage, in the order it prints them.
SUMMARY_METRICS = ("pages", "chunks", "redactions", "vectors", "seconds", "reused")
# Shipped with every job: the project code, without local state and tooling.
RUNTIME_EXCLUDES = [".venv", ".work", ".git", ".ci", "tests", "tools", "benchmarks", "*.pdf", "__pycache__"]
_GLOB_CHARS = re.compile(r"([*?\[])")


def plan_run(dag_id: str, run_id: str, keys: list[str] | None) -> list[dict[str, Any]]:
    """The run's batches; planned and written on the first call, read back on a retry."""
    settings = get_settings()
    storage = Storage(settings)
    folder = run_folder(settings.artifacts_uri, dag_id, run_id)
    plan = read_plan(storage, folder)
    if plan is not None:
        log.info("This run's plan is already written at %s: using it", folder)
    else:
        documents, unreadable = discover(storage, settings.inbox_uri, keys or None)
        batches = plan_batches(
            documents,
            max_documents=settings.batch_max_documents,
            max_bytes=settings.batch_max_bytes,
            max_batches=settings.max_batches_per_run,
        )
        plan = write_plan(storage, folder, run_id, batches, unreadable)
    for item in plan.unreadable:
        log.warning("not ingested: %s", item.error)
    log.info("%d document(s) in %d batch(es) at %s", sum(b.documents for b in plan.batches),
             len(plan.batches), folder)
    return [batch.model_dump() for batch in plan.batches]


def sensor_bucket() -> str:
    return split_s3_uri(get_settings().inbox_uri)[0]


def sensor_keys(keys: list[str] | None) -> list[str]:
    """Keys in the inbox bucket the sensor waits for: the named ones, else anything under the inbox.

    Relative to the bucket, so no URL parsing can cut a key at '#' or '?'; the sensor
    matches them as wildcards, so a key's own '*', '?' and '[' are escaped.
    """
    inbox = get_settings().inbox_uri
    bucket, prefix = split_s3_uri(inbox)
    if not keys:
        return [_GLOB_CHARS.sub(r"[\1]", prefix) + "*"]
    found = []
    for uri in key_uris(inbox, keys):
        if not uri.startswith(f"s3://{bucket}/"):
            raise ValueError(f"{uri} is not in the inbox's bucket s3://{bucket}/: name keys of that bucket")
        found.append(_GLOB_CHARS.sub(r"[\1]", split_s3_uri(uri)[1]))
    return found


def runtime_env() -> dict[str, Any]:
    """Project code as the job's working dir, plus the PIPELINE_* settings of this worker."""
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    return {"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES, "env_vars": env_vars}


def stage_result_prefix(dag_id: str, run_id: str, batch_id: str, stage: str) -> str:
    """Where the jobs of one stage and batch write their results (one file per job)."""
    return f"{run_folder(get_settings().artifacts_uri, dag_id, run_id)}/{batch_id}/{stage}"


def summarize(dag_id: str, run_id: str, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Totals per stage, and for each document that did not finish, where and why it stopped.

    ``results`` maps a stage name to the XComs its mapped tasks pushed (one per batch
    whose job succeeded); each names the batch result it read.
    """
    settings = get_settings()
    storage = Storage(settings)
    plan = read_plan(storage, run_folder(settings.artifacts_uri, dag_id, run_id)) or RunPlan(run_id=run_id, batches=[])
    outcomes: dict[str, dict[str, DocumentOutcome]] = {}
    stages: dict[str, dict[str, float]] = {}
    for stage in STAGE_ORDER:
        batch_results = [BatchResult.model_validate(storage.read_json(x["result_uri"])) for x in results.get(stage) or []]
        outcomes[stage] = {o.doc_id: o for result in batch_results for o in result.documents}
        totals: dict[str, float] = {"batches": len(batch_results)}
        totals["documents"] = sum(len(r.succeeded) for r in batch_results)
        totals["failed"] = sum(len(r.failed) for r in batch_results)
        for result in batch_results:
            for name, value in result.metrics.items():
                totals[name] = totals.get(name, 0.0) + value
        stages[stage] = totals

    failed = [{"doc_id": None, "source_uri": u.source_uri, "stage": "plan", "error": u.error} for u in plan.unreadable]
    documents = 0
    for batch in plan.batches:
        for doc in BatchSpec.model_validate(storage.read_json(batch.batch_uri)).documents:
            documents += 1
            for stage in STAGE_ORDER:
                outcome = outcomes[stage].get(doc.doc_id)
                if outcome is None:
                    error = f"the {stage} job of {batch.batch_id} did not finish: see that task's log"
                elif outcome.status == "failed":
                    error = (outcome.error or "failed").splitlines()[0]
                else:
                    continue
                failed.append({"doc_id": doc.doc_id, "source_uri": doc.source_uri, "stage": stage, "error": error})
                break
    documents += len(plan.unreadable)
    return {"documents": documents, "batches": len(plan.batches), "succeeded": documents - len(failed),
            "failed": failed, "stages": stages}


def format_summary(summary: dict[str, Any]) -> str:
    header = f"{'stage':<8}{'batches':>8}{'docs':>6}{'failed':>7}" + "".join(f"{m:>12}" for m in SUMMARY_METRICS)
    lines = [header, "-" * len(header)]
    for stage, totals in summary["stages"].items():
        cells = "".join(
            f"{totals[m]:>12.1f}" if m == "seconds" and m in totals
            else f"{int(totals[m]):>12d}" if m in totals else f"{'':>12}"
            for m in SUMMARY_METRICS
        )
        counts = f"{int(totals.get('batches', 0)):>8}{int(totals.get('documents', 0)):>6}{int(totals.get('failed', 0)):>7}"
        lines.append(f"{stage:<8}{counts}{cells}")
    lines.append(f"{summary['succeeded']} of {summary['documents']} document(s) ingested "
                 f"in {summary['batches']} batch(es).")
    for item in summary["failed"]:
        lines.append(f"FAILED at {item['stage']}: {item['source_uri']}: {item['error']}")
    return "\n".join(lines)
