"""What the ``document_ingest`` DAG does besides running stages, free of Airflow imports.

- ``discover_documents``: the documents a run ingests, as small JSON-able dicts;
- ``runtime_env``: what every stage's Ray job ships with;
- ``summarize`` / ``format_summary``: per-stage totals of a run, and which documents
  failed where and why.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from include.documents import discover, key_uris
from include.settings import PROJECT_ROOT, get_settings
from include.stages import STAGES
from include.stages.base import StageManifest, manifest_uri
from include.storage import Storage, join_uri

STAGE_ORDER = tuple(STAGES)  # extract, chunk, enrich, embed, load
# What the summary adds up per stage, in the order it prints them.
SUMMARY_METRICS = ("pages", "chunks", "redactions", "vectors", "seconds", "reused")
# Metrics that describe a setting or a peak: the summary keeps their maximum, not a sum.
_PEAK_METRICS = {"dimension", "actors", "max_chunk_chars"}
# Shipped with every job: the project code, without local state and tooling.
RUNTIME_EXCLUDES = [".venv", ".work", ".git", ".ci", "tests", "tools", "*.pdf", "__pycache__"]


def discover_documents(keys: list[str] | None) -> list[dict[str, Any]]:
    settings = get_settings()
    return [doc.model_dump() for doc in discover(Storage(settings), settings.inbox_uri, keys or None)]


def inbox_uris(keys: list[str] | None) -> list[str]:
    """What the sensor waits for: the named keys (relative to the inbox, or full URIs), else anything."""
    inbox = get_settings().inbox_uri
    if not keys:
        return [join_uri(inbox, "*")]
    return key_uris(inbox, keys)


def runtime_env() -> dict[str, Any]:
    """Project code as the job's working dir, plus the PIPELINE_* settings of this worker."""
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    return {"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES, "env_vars": env_vars}


def summarize(documents: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Totals per stage, and for each document that did not finish, where and why it stopped.

    ``results`` maps a stage name to the XComs its mapped tasks pushed.
    """
    settings = get_settings()
    storage = Storage(settings)
    stages: dict[str, dict[str, float]] = {}
    finished: dict[str, set[str]] = defaultdict(set)
    for stage in STAGE_ORDER:
        totals: dict[str, float] = defaultdict(float)
        for item in results.get(stage) or []:
            finished[stage].add(item["doc_id"])
            totals["documents"] += 1
            for name, value in item["metrics"].items():
                totals[name] = max(totals[name], value) if name in _PEAK_METRICS else totals[name] + value
        stages[stage] = dict(totals)

    failed = []
    for doc in documents:
        stopped_at = next((s for s in STAGE_ORDER if doc["doc_id"] not in finished[s]), None)
        if stopped_at is None:
            continue
        uri = manifest_uri(settings, STAGES[stopped_at], doc["doc_id"])
        error = "did not run (an earlier failure or a stopped run)"
        if storage.exists(uri):
            manifest = StageManifest.model_validate(storage.read_json(uri))
            if manifest.status == "failed":
                error = manifest.error.splitlines()[0] if manifest.error else "failed"
        failed.append({"doc_id": doc["doc_id"], "source_uri": doc["source_uri"], "stage": stopped_at, "error": error})

    return {"documents": len(documents), "succeeded": len(documents) - len(failed), "failed": failed, "stages": stages}


def format_summary(summary: dict[str, Any]) -> str:
    header = f"{'stage':<8}{'docs':>6}" + "".join(f"{m:>12}" for m in SUMMARY_METRICS)
    lines = [header, "-" * len(header)]
    for stage, totals in summary["stages"].items():
        cells = "".join(
            f"{totals[m]:>12.1f}" if m == "seconds" and m in totals
            else f"{int(totals[m]):>12d}" if m in totals else f"{'':>12}"
            for m in SUMMARY_METRICS
        )
        lines.append(f"{stage:<8}{int(totals.get('documents', 0)):>6}{cells}")
    lines.append(f"{summary['succeeded']} of {summary['documents']} document(s) ingested.")
    for item in summary["failed"]:
        lines.append(f"FAILED at {item['stage']}: {item['source_uri']}: {item['error']}")
    return "\n".join(lines)
