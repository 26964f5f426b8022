"""The contract every stage keeps: what it is made of, where it writes, what it reports.

A stage runs over a *batch* of documents as one Ray job. It is made of three plain
functions, so the same code runs on a Ray cluster and in one process:

- ``split(document, settings)``: the document's *parts*, bounded units of work (a
  range of pages, a range of chunks), so a big document spreads over the workers;
- ``worker``: a callable class that loads its model once in ``__init__`` and turns
  one part into a JSON-able payload in ``__call__``;
- ``assemble(ctx, payloads)``: the document's payloads, in part order, become its
  outputs under ``<artifacts_uri>/<output dir>/<doc_id>/``.

Each document keeps its own ``_manifest.json``: status, output URIs, metrics, a
fingerprint of what shaped the output (settings, code, library versions, chained with
the upstream stage's) and a digest of the outputs. A document whose manifest records
success with the same fingerprint, made from the same upstream outputs, is reused
instead of redone. What a document causes fails that document alone; what the
infrastructure causes fails the whole job, which a retry may fix (``include.failures``).

The batch's outcome is a ``BatchResult``: one entry per document. The job that
wrote it is named in it (``submission_id``), so a result is never mistaken for
another job's.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from include.contract import (
    SPEND_METRICS,
    BatchResult,
    DocumentOutcome,
    DocumentRef,
    Metrics,
    Outputs,
    StageManifest,
    now,
)
from include.documents import ReplacedSinceListed, hashed
from include.failures import is_infrastructure
from include.fingerprints import StageSpec, check_installed, stage_fingerprint
from include.settings import PipelineSettings
from include.storage import ObjectNotFound, Storage, join_uri

if TYPE_CHECKING:
    from include.backends.vector_stores import EmbedderInfo
    from include.quality.expectations import Checks

log = logging.getLogger(__name__)


class StoreAccess(Protocol):
    """What a stage job's driver asks of the vector store: its quality gates' reads, and load's
    clean-up after its workers' writes (the old version's vectors deleted). A ``VectorStore``, or
    the warm validator, which keeps a client (``include.stages.warm``), so that the driver never
    imports the store's client (about 1.2 s with Chroma's, a third of a small drop's load job)."""

    def embedder(self) -> EmbedderInfo | None: ...

    # Documents' records as the store holds them, per doc_id: id -> metadata, with the text as "text".
    def documents_records(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]: ...

    # Removes the source's vectors but those in ``keep_ids``; how many went.
    def delete_stale(self, source_uri: str, keep_ids: set[str]) -> int: ...


# Where a job reaches the store; called when needed, so a job that does not never opens a client.
Store = Callable[[], StoreAccess]


class Validator(Protocol):
    """Where a stage job's quality gates are validated and read the store: in the job's own process
    (``InProcessValidator``), or in the warm validator (``include.stages.warm.validator``)."""

    def prepare(self, *, validates: bool) -> None:
        """Get ready in the background, while the stage's workers start: not after their work.
        ``validates``: the job's gate runs (GX is needed), not only its assemble's store access."""

    def validate(self, checks: Checks) -> dict[str, Any]:
        """The checks validated: GX's result, as JSON (``include.quality.expectations.validate``)."""

    def store(self) -> StoreAccess:
        """The vector store, as the gates and load's ``assemble`` reach it."""


class InProcessValidator:
    """The gates validated, and the store read for them, in this process."""

    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings

    def prepare(self, *, validates: bool) -> None:
        if validates:  # GX takes about 3 s to import
            threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True).start()

    def validate(self, checks: Checks) -> dict[str, Any]:
        from include.quality.expectations import validate

        return validate(checks)

    def store(self) -> StoreAccess:
        from include.backends.vector_stores import process_vector_store

        return process_vector_store(self._settings)


MANIFEST_NAME = "_manifest.json"

Part = dict[str, Any]  # a unit of work; "units" (pages, chunks) counts it for progress
Payload = Any  # JSON-able result of one part


class DocumentError(Exception):
    """This document cannot go through the stage (it vanished or changed while being read...).

    The message must name the document and the cause: it ends up in the Airflow
    task log, the document's manifest, the ledger and the run summary.
    """

    bad_file = False
    infrastructure = False  # see ``include.failures``
    # What a person filters the ledger on (``ledger documents --cause``): why the document failed.
    cause = "document"


class BadFileError(DocumentError):
    """The file itself is bad (empty, corrupt, encrypted, not a PDF, no text): trying again cannot
    help, so the orchestrator moves it to quarantine until a fixed file is dropped."""

    bad_file = True
    cause = "bad_file"


class OverTimeLimit(BadFileError):
    """A stage worked on the document for longer than ``max_seconds_per_document``."""

    cause = "time_limit"

    @classmethod
    def of(cls, stage: str, document: DocumentRef, settings: PipelineSettings) -> OverTimeLimit:
        return cls(f"{document.source_uri}: {stage} worked on this document for more than "
                   f"{settings.max_seconds_per_document:g} s (PIPELINE_MAX_SECONDS_PER_DOCUMENT): stopped; raise "
                   "the limit and drop the file again to try it")


class StaleVersion(DocumentError):
    """The inbox holds another version of the document now (or none): a stage that writes to the
    vector store does nothing for it, so an old run (a cleared one, or one whose claim was taken
    over) never overwrites or deletes what a newer run loaded."""

    cause = "stale"


class QualityGateFailed(DocumentError):
    """The stage's output for this document fails an expectation of the stage's quality gate
    (``include.quality.suites``). The file is not shown bad, the pipeline's output is: the document
    is not quarantined. The same pipeline would make the same output from the same file, so it is
    not tried again until either changes (a fix is a new pipeline fingerprint), or a person asks
    for a reprocess (``include.control.incremental.decide``)."""

    cause = "quality_gate"


class StoreCheckFailed(QualityGateFailed):
    """The load gate: the vector store does not hold what the load wrote for the document. That is
    the store's doing (a lost write, a lagging read), not the output's: the document is tried again
    next run, like any failed document."""

    cause = "store_check"


def check_current(storage: Storage, document: DocumentRef) -> None:
    """``StaleVersion`` unless the inbox still holds the version ``document`` was planned from."""
    if document.object_version is None:
        return  # not planned from a listing (a document described by hand): nothing to compare
    try:
        current = storage.stat(document.source_uri).version
    except ObjectNotFound:
        current = None
    if current != document.object_version:
        now_there = f"version {current}" if current else "no file"
        raise StaleVersion(f"{document.source_uri}: the inbox holds {now_there} now, not the version "
                           f"{document.object_version} this run planned: nothing written for it (the run that "
                           "planned the current file loads it)")


class UnexpectedDocumentError(DocumentError):
    """Something other than a ``DocumentError`` went wrong while a stage worked on this document."""


def as_document_error(stage: str, source_uri: str, exc: Exception) -> DocumentError | None:
    """What ``exc``, raised while ``stage`` worked on one document, is for that document: its
    failure, or None when the infrastructure caused it (the caller re-raises: the job fails)."""
    if isinstance(exc, DocumentError):
        return exc
    if is_infrastructure(exc):
        return None
    log.error("%s of %s: unexpected %s", stage, source_uri, type(exc).__name__, exc_info=exc)
    return UnexpectedDocumentError(f"{source_uri}: {stage} failed on this document: {type(exc).__name__}: {exc}")


class DocInput(BaseModel):
    """What a stage's split and worker get for one document: picklable and JSON-able."""

    document: DocumentRef
    upstream_outputs: Outputs = {}

    def upstream_output(self, name: str) -> str:
        if name not in self.upstream_outputs:
            raise KeyError(f"{self.document.source_uri}: the upstream stage recorded no {name!r} output")
        return self.upstream_outputs[name]


@dataclass
class StageInput:
    """A document entering a stage, with the upstream manifest it comes from (none for the first)."""

    document: DocumentRef
    upstream: StageManifest | None = None
    upstream_uri: str | None = None

    def doc_input(self) -> DocInput:
        return DocInput(document=self.document, upstream_outputs=self.upstream.outputs if self.upstream else {})


def first_stage_inputs(
    storage: Storage, documents: list[DocumentRef], ingested_sha256: dict[str, str]
) -> tuple[list[StageInput], list[DocumentOutcome]]:
    """Hash each planned document (the only read of it outside its stage): the ones to run, and the
    ones settled already: the bytes the ledger has ingested (``unchanged``), or gone since listed."""
    items: list[StageInput] = []
    settled: list[DocumentOutcome] = []
    for planned in documents:
        try:
            document = hashed(storage, planned)
        except (ObjectNotFound, ReplacedSinceListed) as exc:
            error = str(exc) if isinstance(exc, ReplacedSinceListed) else (
                f"{planned.source_uri}: the file was removed from the inbox after it was listed ({exc})")
            settled.append(DocumentOutcome(doc_id=planned.doc_id, source_uri=planned.source_uri, status="failed",
                                           retryable=False, error=error))
            continue
        if ingested_sha256.get(document.source_uri) == document.content_sha256:
            log.info("%s: the same bytes as the version ingested before (only its tag changed): unchanged",
                     document.source_uri)
            settled.append(DocumentOutcome(doc_id=document.doc_id, source_uri=document.source_uri,
                                           status="unchanged", content_sha256=document.content_sha256))
            continue
        items.append(StageInput(document))
    return items, settled


@dataclass
class AssembleContext:
    """Where ``assemble`` writes one document's outputs (every write is digested), and where it has
    them checked by its stage's quality gate."""

    settings: PipelineSettings
    storage: Storage
    doc: DocInput
    prefix: str
    # The vector store, as the job's validator reaches it (``Stage.uses_store``).
    store: Store
    stage: str = ""
    # What the upstream stage recorded of the document (extract's pages, for the chunk gate).
    upstream_metrics: Metrics = field(default_factory=dict)
    # This document's validation results (stage, suite, doc_id, mode, success and GX's result as JSON),
    # kept for the run's Data Docs.
    validations: list[dict[str, Any]] = field(default_factory=list)
    # Expectations failed under a gate set to warn.
    quality_warnings: int = 0
    _digests: dict[str, str] = field(default_factory=dict)

    @property
    def document(self) -> DocumentRef:
        return self.doc.document

    @property
    def gated(self) -> bool:
        """Does this stage's gate run (``PIPELINE_QUALITY__<STAGE>`` is not ``off``)?"""
        return self.settings.quality.mode(self.stage) != "off"

    def judge(self, result: dict[str, Any], suite: str, failure: type[QualityGateFailed]) -> None:
        """The document's part of its gate's validation (``validate_together``): a failed expectation
        raises ``failure`` (the document fails alone), or is logged and counted when the gate warns."""
        from include.quality.expectations import failures

        mode = self.settings.quality.mode(self.stage)
        self.validations.append({"stage": self.stage, "suite": suite, "doc_id": self.document.doc_id,
                                 "mode": mode, "success": result["success"], "result": result})
        if result["success"]:
            return
        failed = failures(result)
        message = f"{self.document.source_uri}: {self.stage}'s quality gate: {'; '.join(failed)}"
        if mode == "fail":
            raise failure(message)
        self.quality_warnings += len(failed)
        log.warning("%s (PIPELINE_QUALITY__%s=warn: it goes on)", message, self.stage.upper())

    def write(self, name: str, data: bytes) -> str:
        uri = join_uri(self.prefix, name)
        self.storage.write_bytes(uri, data)
        self._digests[name] = hashlib.sha256(data).hexdigest()
        return uri

    def write_text(self, name: str, text: str) -> str:
        return self.write(name, text.encode("utf-8"))

    def write_jsonl(self, name: str, rows: list[dict[str, Any]]) -> str:
        return self.write_text(name, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))

    def discard(self) -> None:
        """Remove what was written: an output its gate failed is not left for anyone to read (an
        enriched chunk with PII left in it, say)."""
        for name in self._digests:
            self.storage.delete(join_uri(self.prefix, name))
        self._digests.clear()

    def digest(self) -> str | None:
        if not self._digests:
            return None
        blob = json.dumps(self._digests, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Worker(Protocol):
    def __init__(self, settings: PipelineSettings) -> None: ...
    def __call__(self, doc: DocInput, part: Part) -> Payload: ...


@dataclass(frozen=True)
class Stage:
    # Its name, and what shapes its output (what the Airflow side knows of it).
    spec: StageSpec
    output_dir: str
    split: Callable[[DocInput, PipelineSettings], list[Part]]
    worker: type[Worker]
    assemble: Callable[[AssembleContext, list[Payload]], tuple[Outputs, Metrics]]
    # The settings field holding this stage's worker pool (``PoolSettings``).
    pool: str
    # What progress counts besides documents (pages, chunks), if anything.
    unit: str | None = "chunks"
    # False when the output lives outside our artifacts (the vector store), which
    # may have been wiped since: such a stage always redoes its (idempotent) work.
    reusable: bool = True
    # What the worker runs, as an error names it ("all-MiniLM-L6-v2 on ONNX Runtime").
    runs: Callable[[PipelineSettings], str] = lambda _settings: ""
    # Whether its worker calls a paid API with these settings (then the batch's budget bounds it).
    pays: Callable[[PipelineSettings], bool] = lambda _settings: False
    # Its quality gate (``include.quality.gates``): the checks of each document's output, from its
    # payloads (and what the store shows, read through ``Store``), for the documents validated
    # together once their outputs are assembled; and what a failed one raises.
    gate: Callable[[list[tuple[AssembleContext, list[Payload]]], Store], list[Checks]] | None = None
    gate_failure: type[QualityGateFailed] = QualityGateFailed
    # Whether its assemble reaches the vector store (``AssembleContext.store``), gated or not.
    uses_store: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


def config_fingerprint(stage: Stage, settings: PipelineSettings, upstream: StageManifest | None) -> str:
    """The stage's fingerprint chained after its upstream's: what shaped the output, end to end."""
    own = stage_fingerprint(stage.spec, settings)
    return f"{upstream.config_fingerprint}.{own}" if upstream is not None else own


def ranges(count: int, size: int) -> list[Part]:
    """Consecutive ``[start, stop)`` parts of at most ``size`` items (chunks, pages) out of ``count``.

    A document of more than two full parts ends in smaller ones, each half of what is left (down to
    an eighth of ``size``): with parts all of one size, the worker that takes the last one runs it
    alone while the others, done, wait for it (a 64-chunk part of embed takes about 4 s on one core).
    Two workers take the halves in turn and finish about together; more still get a shrinking tail."""
    parts: list[Part] = []
    start, smallest = 0, -(-size // 8)
    while start < count:
        left = count - start
        if count <= 2 * size:
            step = min(size, left)
        else:  # the tail halves; what would be left under the smallest goes with this part
            step = min(size, max(-(-left // 2), smallest))
            step = left if left - step < smallest else step
        parts.append({"start": start, "stop": start + step, "units": step})
        start += step
    return parts


def chunk_parts(doc: DocInput, settings: PipelineSettings) -> list[Part]:
    """Ranges of ``chunks_per_part`` chunks of the upstream's ``chunks`` JSON-lines file."""
    count = len(Storage(settings).read_jsonl(doc.upstream_output("chunks")))
    return ranges(count, settings.chunks_per_part)


class ChunkRows:
    """The upstream ``chunks`` rows of one part. The parts of a document reach a worker one
    after another, so its file is read once and kept until the next document."""

    def __init__(self, settings: PipelineSettings) -> None:
        self._read = lru_cache(maxsize=1)(Storage(settings).read_jsonl)

    def __call__(self, doc: DocInput, part: Part) -> list[dict[str, Any]]:
        return self._read(doc.upstream_output("chunks"))[part["start"] : part["stop"]]


def stage_prefix(settings: PipelineSettings, stage: Stage, doc_id: str) -> str:
    return join_uri(settings.artifacts_uri, stage.output_dir, doc_id)


def manifest_uri(settings: PipelineSettings, stage: Stage, doc_id: str) -> str:
    return join_uri(stage_prefix(settings, stage, doc_id), MANIFEST_NAME)


# --- running a stage over a batch ------------------------------------------------


@dataclass
class DocumentDone:
    """What an executor hands back for one document: its payloads in part order, or why it failed."""

    item: StageInput
    payloads: list[Payload] = field(default_factory=list)
    error: DocumentError | None = None
    seconds: float = 0.0


class Executor(Protocol):
    """Runs split and worker for every document; yields each document once."""

    def __call__(self, stage: Stage, settings: PipelineSettings, items: list[StageInput],
                 progress: Progress) -> Iterator[DocumentDone]: ...


class Progress:
    """Counts what a batch has done and logs it every few seconds while work goes on."""

    def __init__(self, stage: str, unit: str, documents: int, interval: float) -> None:
        self.stage, self.unit, self.total, self.interval = stage, unit, documents, interval
        self.counts: Counter[str] = Counter()
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"{stage}-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.report()

    def add(self, **counts: int) -> None:
        with self._lock:
            self.counts.update(counts)

    def report(self) -> None:
        with self._lock:
            c = dict(self.counts)
        done = c.get("succeeded", 0) + c.get("failed", 0)
        units = f", {c.get('units', 0)} {self.unit} processed" if self.unit else ""
        log.info(
            "%s: %d/%d document(s) done (%d reused, %d failed)%s, %.0fs",
            self.stage, done, self.total, c.get("reused", 0), c.get("failed", 0), units,
            time.monotonic() - self._started,
        )

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()


def _reusable(storage: Storage, uri: str, fingerprint: str, upstream: StageManifest | None) -> StageManifest | None:
    if not storage.exists(uri):
        return None
    previous = StageManifest.model_validate(storage.read_json(uri))
    if previous.status != "succeeded" or previous.config_fingerprint != fingerprint:
        return None
    if upstream is not None and previous.upstream_digest != upstream.output_digest:
        return None
    if not all(storage.exists(out) for out in previous.outputs.values()):
        return None
    return previous


def run_stage(
    stage: Stage,
    settings: PipelineSettings,
    items: list[StageInput],
    *,
    batch_id: str,
    executor: Executor,
    recompute: bool = False,
    submission_id: str | None = None,
    settled: list[DocumentOutcome] | None = None,
    budget_usd: float | None = None,
    validations_uri: str | None = None,
    validator: Validator | None = None,
) -> BatchResult:
    """Run one stage over a batch; write each document's manifest as it finishes.

    Returns the batch result, with the ``settled`` outcomes (documents of the batch that
    needed no run, see ``first_stage_inputs``) first. Lets unexpected exceptions through (the caller records
    them): documents finished before are already recorded and reused by a retry.

    A stage that pays for its calls stops once the documents it finished cost ``budget_usd``:
    the parts in flight finish (Ray Data runs a few ahead), the documents not done are
    ``postponed``, and what is left of the budget goes to the next stage.

    The validation results of the stage's quality gate, one per document it assembled, go to
    ``validations_uri`` (the batch result names it as its ``quality`` output). ``validator`` validates
    them and reads the store for them (by default, in this process).
    """
    storage = Storage(settings)
    started = now()
    libraries = check_installed(stage.spec)  # before any output is recorded under the pinned versions
    outcomes: list[DocumentOutcome] = []
    fingerprints = {item.document.doc_id: config_fingerprint(stage, settings, item.upstream) for item in items}
    pending: list[StageInput] = []

    with Progress(stage.name, stage.unit, len(items), settings.progress_interval_seconds) as progress:
        for item in items:
            target = manifest_uri(settings, stage, item.document.doc_id)
            fingerprint = fingerprints[item.document.doc_id]
            previous = None
            if stage.reusable and not recompute:
                previous = _reusable(storage, target, fingerprint, item.upstream)
            if previous is None:
                pending.append(item)
                continue
            outcomes.append(DocumentOutcome(
                doc_id=item.document.doc_id, source_uri=item.document.source_uri, status="succeeded",
                manifest_uri=target, reused=True, content_sha256=item.document.content_sha256,
                # Reused work took no time and cost nothing this time.
                metrics={**previous.metrics, **{k: 0.0 for k in SPEND_METRICS if k in previous.metrics},
                         "seconds": 0.0, "reused": 1.0},
            ))
            progress.add(succeeded=1, reused=1)
        if outcomes:
            log.info("%s: reusing the recorded result of %d document(s)", stage.name, len(outcomes))

        budget = budget_usd if stage.pays(settings) else None
        validator = validator or InProcessValidator(settings)
        finishing = Finishing(stage, settings, storage, fingerprints, started, submission_id, validator)
        gated = stage.gate is not None and settings.quality.mode(stage.name) != "off"
        if pending and (gated or stage.uses_store):
            validator.prepare(validates=gated)
        if pending and (budget is None or budget > 0):
            with closing(executor(stage, settings, pending, progress)) as finished:
                for done in finished:
                    for outcome in finishing.add(done):
                        outcomes.append(outcome)
                        progress.add(**{outcome.status: 1})
                    if budget is not None and finishing.spent >= budget:
                        break
            for outcome in finishing.flush():
                outcomes.append(outcome)
                progress.add(**{outcome.status: 1})
        spent, validations = finishing.spent, finishing.validations
        done_ids = {outcome.doc_id for outcome in outcomes}
        if postponed := [item for item in pending if item.document.doc_id not in done_ids]:
            log.warning("%s: the batch's budget for paid calls is spent ($%.4f of $%.4f left to it): %d document(s) "
                        "postponed to the next run", stage.name, spent, budget or 0.0, len(postponed))
            outcomes += [_postponed(stage, item.document, budget or 0.0) for item in postponed]

    order = {item.document.doc_id: n for n, item in enumerate(items)}
    outcomes.sort(key=lambda o: order[o.doc_id])
    metrics = total_metrics(o.metrics for o in outcomes if o.status == "succeeded")
    if "model_loads" in progress.counts:  # the job's own, not its documents': what warm workers saved
        metrics["model_loads"] = float(progress.counts["model_loads"])
    outputs: Outputs = {}
    if validations and validations_uri:
        storage.write_json(validations_uri, validations)
        outputs["quality"] = validations_uri
        # Counted here, so the run's summary reads only the files it renders.
        metrics.update(quality_validations=float(len(validations)),
                       quality_failed=float(sum(not v["success"] and v["mode"] == "fail" for v in validations)),
                       quality_warned=float(sum(not v["success"] and v["mode"] == "warn" for v in validations)))
    return BatchResult(
        stage=stage.name, batch_id=batch_id, submission_id=submission_id, status="succeeded",
        documents=[*(settled or []), *outcomes], metrics=metrics, outputs=outputs,
        libraries=libraries, started_at=started, finished_at=now(),
        budget_usd_left=None if budget_usd is None else round(max(budget_usd - spent, 0.0), 6),
    )


def _postponed(stage: Stage, document: DocumentRef, budget: float) -> DocumentOutcome:
    return DocumentOutcome(
        doc_id=document.doc_id, source_uri=document.source_uri, status="postponed",
        content_sha256=document.content_sha256,
        error=f"{document.source_uri}: postponed at {stage.name}: the batch's share of the run's budget for paid "
              f"calls (${budget:.4f} left to this stage; PIPELINE_MAX_USD_PER_RUN) is spent; the next run takes it",
    )


@dataclass
class _Assembled:
    """A document whose outputs are written, waiting for its gate, with others, before its manifest
    records success."""

    done: DocumentDone
    ctx: AssembleContext
    outputs: Outputs
    metrics: Metrics
    since: float  # monotonic, when it was assembled


class Finishing:
    """Each document an executor hands back, finished: its outputs assembled at once, its manifest
    written once its quality gate has judged them, or at once with no gate.

    A document waits for those finished about the same time, for its gate to build their checks (what
    it reads of the store read once) and validate them together, in one frame
    (``include.quality.expectations.validate_together``): a validation costs GX about 8 ms plus 4 to
    15 ms per expectation whatever its rows, more than a two-page document's chunking or loading.
    They wait until their parts number ``gate_parts`` (a long document's reach it alone: what waits
    is held in memory), ``gate_wait_seconds`` after the first (checked as documents finish), or the
    end of the stage's work: a job that dies meanwhile has recorded none of them, and its retry
    redoes them."""

    def __init__(self, stage: Stage, settings: PipelineSettings, storage: Storage, fingerprints: dict[str, str],
                 started: datetime, submission_id: str | None, validator: Validator) -> None:
        self.stage, self.settings, self.storage, self.fingerprints = stage, settings, storage, fingerprints
        self.started, self.submission_id, self.validator = started, submission_id, validator
        # The gate's validation results, one per document judged, kept for the run's Data Docs.
        self.validations: list[dict[str, Any]] = []
        # What the documents assembled cost in paid calls.
        self.spent = 0.0
        self._waiting: list[_Assembled] = []

    def add(self, done: DocumentDone) -> list[DocumentOutcome]:
        """The outcomes settled by this document's arrival: its own, those of the documents its gate
        waited with, or none while it waits."""
        if done.error is not None:
            return [self._failed(done, done.error)]
        document = done.item.document
        ctx = AssembleContext(self.settings, self.storage, done.item.doc_input(),
                              stage_prefix(self.settings, self.stage, document.doc_id), stage=self.stage.name,
                              store=self.validator.store,
                              upstream_metrics=done.item.upstream.metrics if done.item.upstream else {})
        try:
            outputs, metrics = self.stage.assemble(ctx, done.payloads)
        except Exception as exc:
            error = as_document_error(self.stage.name, document.source_uri, exc)
            if error is None:
                raise
            return [self._failed(done, error)]
        self.spent += metrics.get("cost_usd", 0.0)
        if self.stage.gate is None or not ctx.gated:
            return [self._succeeded(done, ctx, outputs, metrics)]
        self._waiting.append(_Assembled(done, ctx, outputs, metrics, time.monotonic()))
        bounds = self.settings.quality
        if (sum(len(a.done.payloads) for a in self._waiting) >= bounds.gate_parts
                or time.monotonic() - self._waiting[0].since >= bounds.gate_wait_seconds):
            return self.flush()
        return []

    def flush(self) -> list[DocumentOutcome]:
        """The waiting documents' checks built and validated together, each document judged by its own
        rows, and recorded. A gate that cannot be built for them fails them all, named with why (or
        the job, when the infrastructure is why)."""
        from include.quality.expectations import validate_together

        waiting, self._waiting = self._waiting, []
        if not waiting or self.stage.gate is None:
            return []
        began = time.monotonic()
        try:
            checks = self.stage.gate([(a.ctx, a.done.payloads) for a in waiting], self.validator.store)
        except Exception as exc:
            errors = [as_document_error(self.stage.name, a.ctx.document.source_uri, exc) for a in waiting]
            if None in errors:
                raise
            return [self._failed(a.done, error) for a, error in zip(waiting, errors) if error is not None]
        results = validate_together([(a.ctx.document.doc_id, c) for a, c in zip(waiting, checks)],
                                     self.validator.validate)
        # The gate's time, shared by rows: each document's is its share.
        seconds, rows = time.monotonic() - began, sum(max(c.rows, 1) for c in checks)
        outcomes = []
        for assembled, document_checks, result in zip(waiting, checks, results):
            ctx = assembled.ctx
            share = seconds * max(document_checks.rows, 1) / rows
            metrics = {**assembled.metrics, "quality_seconds": round(share, 4)}
            try:
                ctx.judge(result, document_checks.suite, self.stage.gate_failure)
            except QualityGateFailed as failed:
                ctx.discard()
                outcomes.append(self._failed(assembled.done, failed))
                continue
            finally:
                self.validations += ctx.validations
            outcomes.append(self._succeeded(assembled.done, ctx, assembled.outputs, metrics))
        return outcomes

    def _base(self, done: DocumentDone) -> dict[str, Any]:
        """What every manifest of the document records."""
        item = done.item
        return dict(stage=self.stage.name, document=item.document,
                    config_fingerprint=self.fingerprints[item.document.doc_id],
                    upstream_manifest_uri=item.upstream_uri,
                    upstream_digest=item.upstream.output_digest if item.upstream else None,
                    submission_id=self.submission_id, started_at=self.started)

    def _failed(self, done: DocumentDone, error: DocumentError) -> DocumentOutcome:
        document = done.item.document
        target = manifest_uri(self.settings, self.stage, document.doc_id)
        log.warning("%s: %s", self.stage.name, error)
        manifest = StageManifest(status="failed", error=str(error), retryable=False, bad_file=error.bad_file,
                                 finished_at=now(), **self._base(done))
        self.storage.write_json(target, manifest.model_dump(mode="json"))
        return DocumentOutcome(doc_id=document.doc_id, source_uri=document.source_uri, status="failed",
                               manifest_uri=target, error=str(error), retryable=False, bad_file=error.bad_file,
                               cause=error.cause, content_sha256=document.content_sha256)

    def _succeeded(self, done: DocumentDone, ctx: AssembleContext, outputs: Outputs,
                   metrics: Metrics) -> DocumentOutcome:
        document = done.item.document
        target = manifest_uri(self.settings, self.stage, document.doc_id)
        metrics = {**metrics, "seconds": round(done.seconds, 3)}
        if ctx.quality_warnings:
            metrics["quality_warnings"] = float(ctx.quality_warnings)
        manifest = StageManifest(status="succeeded", outputs=outputs, metrics=metrics, output_digest=ctx.digest(),
                                 finished_at=now(), **self._base(done))
        self.storage.write_json(target, manifest.model_dump(mode="json"))
        log.info("%s of %s: done %s", self.stage.name, document.name, _format_metrics(metrics))
        return DocumentOutcome(doc_id=document.doc_id, source_uri=document.source_uri, status="succeeded",
                               manifest_uri=target, metrics=metrics, content_sha256=document.content_sha256)


# Metrics that describe a setting or a peak: totals keep their maximum, not a sum.
PEAK_METRICS = frozenset({"dimension", "actors", "max_chunk_chars"})


def total_metrics(all_metrics: Iterator[Metrics] | list[Metrics]) -> Metrics:
    totals: dict[str, float] = {}
    for metrics in all_metrics:
        for name, value in metrics.items():
            previous = totals.get(name, 0.0)
            totals[name] = max(previous, value) if name in PEAK_METRICS else previous + value
    return totals


def _format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()))
