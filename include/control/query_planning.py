"""The Airflow side of ``rag_batch_query``: which question files need answers, and the run's summary.

A questions file is answered when its answers folder holds a marker (``_answers.json``)
naming the same version (ETag) of the file: dropping a new or changed file under the
queries prefix is all it takes to get it answered, and a scheduled run over answered
files submits no job. Each pending file becomes one Ray job (``python -m include.query
run``); the job writes its result next to the run's other files, the operator reads it
back, and XCom carries its URIs and metrics only.
"""

from __future__ import annotations

import json
import logging
import shlex
from typing import Any

from include.control.batching import run_folder
from include.control.settings import get_control_settings
from include.documents import key_uris
from include.query.answers import MARKER, answers_uri_for
from include.query.report import format_metrics
from include.settings import PipelineSettings
from include.storage import ObjectInfo, ObjectNotFound, Storage, join_uri, s3_object_info, split_s3_uri

log = logging.getLogger(__name__)


def is_questions_file(uri: str) -> bool:
    return uri.lower().endswith(".parquet")


def is_answered(storage: Storage, settings: PipelineSettings, info: ObjectInfo) -> bool:
    marker = join_uri(answers_uri_for(settings, info.uri), MARKER)
    if not storage.exists(marker):
        return False
    return storage.read_json(marker).get("questions_version") == info.version


def has_unanswered(files: list[dict[str, Any]], params: dict[str, Any] | None = None) -> bool:
    """The sensor's ``check_fn``: a listed questions file has no answers for its current version.
    A run that names its files, or asks to answer again, goes on as soon as they exist: its plan
    says what, if anything, needs answers."""
    params = params or {}
    settings = get_control_settings()
    bucket = split_s3_uri(settings.queries_uri)[0]
    listing = [s3_object_info(bucket, entry) for entry in files]
    listing = [info for info in listing if is_questions_file(info.uri)]
    if params.get("keys") or params.get("reanswer"):
        return bool(listing)
    storage = Storage(settings)
    waiting = [info.uri for info in listing if not is_answered(storage, settings, info)]
    log.info("Queries: %d questions file(s), %d without current answers%s", len(listing), len(waiting),
             f": {', '.join(waiting[:5])}" if waiting else "")
    return bool(waiting)


def pending(settings: PipelineSettings, keys: list[str] | None = None, reanswer: bool = False) -> list[ObjectInfo]:
    """The questions files to answer (the named ones, else all under the queries prefix) that have no
    answers for their current version, or all of them with ``reanswer``."""
    storage = Storage(settings)
    if keys:
        found = []
        for uri in key_uris(settings.queries_uri, keys):
            if not is_questions_file(uri):
                raise ValueError(f"{uri} is not a questions file (.parquet)")
            try:
                found.append(storage.stat(uri))
            except ObjectNotFound as exc:
                raise ValueError(f"no questions file at {uri}") from exc
        listing = found
    else:
        listing = [info for info in storage.list_objects(settings.queries_uri) if is_questions_file(info.uri)]
    if reanswer:
        return listing
    return [info for info in listing if not is_answered(storage, settings, info)]


def plan(dag_id: str, run_id: str, keys: list[str] | None = None, reanswer: bool = False,
         where: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """One Ray job per questions file: its entrypoint and where it writes its result. ``where``
    (a metadata filter, e.g. ``{"doc_id": ...}``) narrows every question's retrieval."""
    settings = get_control_settings()
    jobs = []
    folder = run_folder(settings.artifacts_uri, dag_id, run_id)
    narrow = f" --where {shlex.quote(json.dumps(where))}" if where else ""
    for number, info in enumerate(pending(settings, keys, reanswer), 1):
        entrypoint = f"python -m include.query run --questions {shlex.quote(info.uri)}{narrow}"
        jobs.append({"entrypoint": entrypoint, "result_prefix": join_uri(folder, f"questions-{number:04d}")})
        log.info("To answer: %s -> %s", info.uri, answers_uri_for(settings, info.uri))
    if not jobs:
        log.info("Nothing to answer: every questions file under %s has current answers", settings.queries_uri)
    return jobs


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's totals over its jobs' XComs, and the lines to print."""
    totals: dict[str, float] = {}
    lines = []
    for result in results:
        metrics, outputs = result.get("metrics", {}), result.get("outputs", {})
        lines.append(f"{outputs.get('questions')} -> {outputs.get('answers')}\n{format_metrics(metrics)}")
        for name in ("questions", "answered", "no_context", "errors", "prompt_tokens", "completion_tokens",
                     "retries", "cost_usd", "seconds"):
            totals[name] = round(totals.get(name, 0) + metrics.get(name, 0), 6)
    return {"files": len(results), "totals": totals, "text": "\n\n".join(lines) or "No questions file answered."}

