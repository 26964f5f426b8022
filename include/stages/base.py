"""The contract every stage keeps: where it writes, what its manifest says, how it reruns.

A stage reads its input from object storage, writes its outputs under
``<artifacts_uri>/<output dir>/<doc_id>/`` and, last, a ``_manifest.json`` beside
them. The manifest is the only thing the orchestrator reads back: output URIs and
metrics (counts, seconds, tokens, cost), never the data itself.

Reruns are cheap and safe: a stage whose manifest already records success for the
same document and the same configuration (a fingerprint of its settings, its code and
the libraries it relies on, chained with its upstream's) reuses that result instead
of redoing the work.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel

from include.documents import DocumentRef
from include.settings import PipelineSettings
from include.storage import Storage, join_uri

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"

Metrics = dict[str, float]
Outputs = dict[str, str]


class DocumentError(Exception):
    """This document cannot go through the stage (corrupt, encrypted, empty, not a PDF...).

    The message must name the document and the cause: it ends up in the Airflow
    task log and in the failed manifest.
    """


class StageManifest(BaseModel):
    stage: str
    document: DocumentRef
    status: Literal["succeeded", "failed"]
    outputs: Outputs = {}
    metrics: Metrics = {}
    error: str | None = None
    # False when trying again cannot help (the input itself is bad).
    retryable: bool = True
    config_fingerprint: str
    upstream_manifest_uri: str | None = None
    started_at: datetime
    finished_at: datetime

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


@dataclass
class StageContext:
    """Everything a stage's work function needs; picklable, so it can ship to a Ray task."""

    stage: str
    settings: PipelineSettings
    document: DocumentRef
    prefix: str
    upstream: StageManifest | None = None
    storage: Storage = field(init=False)

    def __post_init__(self) -> None:
        self.storage = Storage(self.settings)

    def output_uri(self, name: str) -> str:
        return join_uri(self.prefix, name)

    def upstream_output(self, name: str) -> str:
        if self.upstream is None or name not in self.upstream.outputs:
            raise KeyError(f"stage {self.stage!r} needs upstream output {name!r}")
        return self.upstream.outputs[name]


StageFn = Callable[[StageContext], tuple[Outputs, Metrics]]
# Runs a stage's work function somewhere (in-process in tests, as a Ray task in a job).
Executor = Callable[[StageFn, StageContext], tuple[Outputs, Metrics]]


def run_inline(fn: StageFn, ctx: StageContext) -> tuple[Outputs, Metrics]:
    return fn(ctx)


@dataclass(frozen=True)
class Stage:
    name: str
    output_dir: str
    work: StageFn
    # Settings whose values change this stage's output.
    settings_fields: tuple[str, ...]
    # False when the output lives outside our artifacts (the vector store), which
    # may have been wiped since: such a stage always redoes its (idempotent) work.
    reusable: bool = True
    # True when the work function schedules its own Ray work (Ray Data) and so must
    # run in the job driver rather than inside a Ray task.
    runs_in_driver: bool = False
    # Code beyond the work function's own module, and installed distributions, whose
    # changes change the output: an upgrade must not reuse what older code made.
    code_modules: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()


@cache
def code_fingerprint(stage: Stage) -> str:
    digest = hashlib.sha256()
    for module in (stage.work.__module__, *stage.code_modules):
        digest.update(inspect.getsource(importlib.import_module(module)).encode())
    for library in stage.libraries:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:12]


def stage_prefix(settings: PipelineSettings, stage: Stage, doc_id: str) -> str:
    return join_uri(settings.artifacts_uri, stage.output_dir, doc_id)


def manifest_uri(settings: PipelineSettings, stage: Stage, doc_id: str) -> str:
    return join_uri(stage_prefix(settings, stage, doc_id), MANIFEST_NAME)


def _now() -> datetime:
    return datetime.now(UTC)


def _reusable_manifest(
    storage: Storage, uri: str, fingerprint: str
) -> StageManifest | None:
    if not storage.exists(uri):
        return None
    previous = StageManifest.model_validate(storage.read_json(uri))
    if previous.status != "succeeded" or previous.config_fingerprint != fingerprint:
        return None
    if not all(storage.exists(out) for out in previous.outputs.values()):
        return None
    return previous


def execute_stage(
    stage: Stage,
    settings: PipelineSettings,
    *,
    document: DocumentRef | None = None,
    upstream_manifest_uri: str | None = None,
    executor: Executor = run_inline,
) -> StageManifest:
    """Run one stage for one document and record the outcome in its manifest.

    Raises ``DocumentError`` (after writing a failed manifest) when the document is
    bad, and lets any other exception through (also recorded) so the caller fails.
    """
    storage = Storage(settings)
    upstream = None
    if upstream_manifest_uri:
        upstream = StageManifest.model_validate(storage.read_json(upstream_manifest_uri))
        if upstream.status != "succeeded":
            raise RuntimeError(
                f"upstream stage {upstream.stage!r} of {upstream.document.source_uri} "
                f"did not succeed: {upstream.error}"
            )
        document = upstream.document
    if document is None:
        raise ValueError("a stage needs either a document or an upstream manifest")

    fingerprint = f"{settings.fingerprint(*stage.settings_fields)}-{code_fingerprint(stage)}"
    if upstream is not None:
        fingerprint = f"{upstream.config_fingerprint}.{fingerprint}"
    target = manifest_uri(settings, stage, document.doc_id)

    if stage.reusable and (previous := _reusable_manifest(storage, target, fingerprint)):
        log.info("%s of %s: reusing the result recorded at %s", stage.name, document.name, target)
        # The manifest tells the orchestrator what *this* run did: no work, a reuse.
        reused = previous.model_copy(
            update={"metrics": {**previous.metrics, "seconds": 0.0, "reused": 1.0}, "finished_at": _now()}
        )
        storage.write_json(target, reused.model_dump(mode="json"))
        return reused

    ctx = StageContext(
        stage=stage.name,
        settings=settings,
        document=document,
        prefix=stage_prefix(settings, stage, document.doc_id),
        upstream=upstream,
    )
    started = _now()
    log.info("%s of %s (%s): started", stage.name, document.name, document.doc_id)
    base = dict(
        stage=stage.name,
        document=document,
        config_fingerprint=fingerprint,
        upstream_manifest_uri=upstream_manifest_uri,
        started_at=started,
    )
    try:
        clock = time.perf_counter()
        outputs, metrics = (run_inline if stage.runs_in_driver else executor)(stage.work, ctx)
        metrics = {**metrics, "seconds": round(time.perf_counter() - clock, 3)}
    except Exception as exc:
        error = str(exc) if isinstance(exc, DocumentError) else (
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        )
        failed = StageManifest(
            status="failed",
            error=error,
            retryable=not isinstance(exc, DocumentError),
            finished_at=_now(),
            **base,
        )
        storage.write_json(target, failed.model_dump(mode="json"))
        raise
    manifest = StageManifest(
        status="succeeded", outputs=outputs, metrics=metrics, finished_at=_now(), **base
    )
    storage.write_json(target, manifest.model_dump(mode="json"))
    log.info("%s of %s: done %s", stage.name, document.name, _format_metrics(metrics))
    return manifest


def _format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()))
