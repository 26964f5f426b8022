"""Where a stage's split and worker run: on Ray Data (a job), or in this process (tests, baseline).

Both executors take the documents of one batch and hand each back once, with its
payloads in part order, or the ``DocumentError`` that stopped it: any exception raised
on a document is its failure unless the infrastructure caused it (``include.failures``),
which fails the job.

On Ray (``run_on_ray``), the batch is split into parts by tasks, then one Ray Data pipeline::

    parts (one block each) --map_batches(worker, actor pool)--> payloads

The split runs as plain tasks before the pool starts (it only reads a file's size in
pages or chunks); the worker runs on an actor pool (``ActorPoolStrategy``, sized by the
stage's ``PoolSettings``, by default to the worker nodes' CPUs), so its model loads once
per actor and the parts of every document, a 600-page PDF's included, spread over the
pool. Order is preserved, so the driver sees each document's parts together and
assembles it while the rest still runs: it holds one document's payloads at a time,
never the batch's. A warm stage (``include.stages.warm``) sends the parts to its named
actors instead, which keep their models loaded from one job to the next.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from include.settings import PipelineSettings
from include.stages.base import (
    BadFileError,
    DocInput,
    DocumentDone,
    DocumentError,
    OverTimeLimit,
    Progress,
    Stage,
    StageInput,
    as_document_error,
)
from include.time_limits import call_with_time_limit
from include.worker_crashes import WorkerCrashed, crashes_named
from include.worker_options import actor_options, task_options, worker_node_cpus

log = logging.getLogger(__name__)

# A split that yields no part (a document with nothing to do) still sends one row, so
# the driver hears of every document.
_NO_PART = -1


def run_inline(
    stage: Stage, settings: PipelineSettings, items: list[StageInput], progress: Progress
) -> Iterator[DocumentDone]:
    """Everything in this process, one document after the other; the worker is built once."""
    worker = None
    for item in items:
        doc = item.doc_input()
        clock = time.perf_counter()
        if worker is None:
            worker = stage.worker(settings)  # a model that cannot load fails the job, not a document
            progress.add(model_loads=1)
        over_time = partial(OverTimeLimit.of, stage.name, item.document, settings)
        try:
            parts = stage.split(doc, settings)
            payloads = []
            for part in parts:
                left = _seconds_left(settings, clock)
                if left is not None and left <= 0:
                    raise over_time()
                payloads.append(call_with_time_limit(left, over_time, worker, doc, part))
                progress.add(units=int(part.get("units", 0)))
        except Exception as exc:
            error = as_document_error(stage.name, item.document.source_uri, exc)
            if error is None:
                raise
            yield DocumentDone(item, error=error, seconds=time.perf_counter() - clock)
            continue
        yield DocumentDone(item, payloads, seconds=time.perf_counter() - clock)


def _seconds_left(settings: PipelineSettings, started: float) -> float | None:
    limit = settings.max_seconds_per_document
    return None if limit is None else limit - (time.perf_counter() - started)


def split_rows(row: dict[str, Any], *, stage: Stage, settings: PipelineSettings) -> list[dict[str, Any]]:
    doc = DocInput.model_validate_json(row["doc"])
    base = {"doc_id": row["doc_id"], "doc": row["doc"], "error": "", "bad_file": False, "units": 0}
    try:
        parts = stage.split(doc, settings)
    except Exception as exc:
        error = as_document_error(stage.name, doc.document.source_uri, exc)
        if error is None:
            raise
        return [{**base, "index": _NO_PART, "part": "null", "error": str(error), "bad_file": error.bad_file}]
    if not parts:
        return [{**base, "index": _NO_PART, "part": "null"}]
    return [
        {**base, "index": n, "part": json.dumps(part), "units": int(part.get("units", 0))}
        for n, part in enumerate(parts)
    ]


class PartWorker:
    """Ray Data callable class around a stage's worker: one per actor, model loaded once (a warm
    worker, ``include.stages.warm``, is one of these that outlives its job)."""

    def __init__(self, stage: Stage, settings: PipelineSettings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        clock = time.perf_counter()
        self._worker = stage.worker(settings)
        self._stage, self._settings = stage, settings
        log.info("%s worker ready in %.1fs", stage.name, time.perf_counter() - clock)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"doc_id": [], "index": [], "payload": [], "error": [], "bad_file": [],
                                     "units": [], "seconds": []}
        for doc_id, doc_json, index, part_json, error, bad_file, units in zip(
            batch["doc_id"], batch["doc"], batch["index"], batch["part"], batch["error"], batch["bad_file"],
            batch["units"],
        ):
            payload, seconds = "null", 0.0
            if not error and index != _NO_PART:
                clock = time.perf_counter()
                doc = DocInput.model_validate_json(doc_json)
                # A part is at most a whole document: one that runs past the document's limit stops
                # (the driver adds up each document's parts against the same limit).
                over_time = partial(OverTimeLimit.of, self._stage.name, doc.document, self._settings)
                try:
                    payload = json.dumps(call_with_time_limit(self._settings.max_seconds_per_document, over_time,
                                                              self._worker, doc, json.loads(part_json)))
                except Exception as exc:
                    failure = as_document_error(self._stage.name, doc.document.source_uri, exc)
                    if failure is None:
                        raise
                    error, bad_file = str(failure), failure.bad_file
                seconds = time.perf_counter() - clock
                # Order is kept for assembly, so a long document holds back the driver's
                # count: each part says itself when it is done.
                what = f"{units} {self._stage.unit}" if self._stage.unit else "whole document"
                log.info("%s of %s: part %d (%s) done in %.1fs", self._stage.name, doc_id, index + 1, what, seconds)
            for name, value in (("doc_id", doc_id), ("index", int(index)), ("payload", payload), ("error", error),
                                ("bad_file", bool(bad_file)), ("units", int(units)), ("seconds", seconds)):
                out[name].append(value)
        return out


def run_on_ray(
    stage: Stage, settings: PipelineSettings, items: list[StageInput], progress: Progress
) -> Iterator[DocumentDone]:
    """The batch as one pipeline. When a worker dies past its restarts, the documents not done yet
    run again one at a time: a document whose worker dies when it runs alone fails alone (the
    document's doing: a native crash in a parser, a page that takes all the memory), and the rest go
    on. When every one of several dies alone, the workers die whatever they run: the job fails."""
    done: set[str] = set()
    try:
        for finished in _pipeline(stage, settings, items, progress):
            done.add(finished.item.document.doc_id)
            yield finished
    except WorkerCrashed as crash:
        rest = [item for item in items if item.document.doc_id not in done]
        if len(items) == 1:
            yield _crashed_alone(stage, rest[0], crash)
            return
        log.warning("%s: %s; running the %d document(s) not done yet one at a time, to find the one it "
                    "died on", stage.name, crash, len(rest))
        yield from _one_at_a_time(stage, settings, rest, progress, crash)


def _one_at_a_time(stage: Stage, settings: PipelineSettings, items: list[StageInput], progress: Progress,
                   first: WorkerCrashed) -> Iterator[DocumentDone]:
    crashed: list[DocumentDone] = []
    for item in items:
        try:
            yield from _pipeline(stage, settings, [item], progress)
        except WorkerCrashed as crash:
            crashed.append(_crashed_alone(stage, item, crash))
    if len(crashed) == len(items) > 1:
        raise first
    yield from crashed


def _crashed_alone(stage: Stage, item: StageInput, crash: WorkerCrashed) -> DocumentDone:
    return DocumentDone(item, error=DocumentError(
        f"{item.document.source_uri}: {stage.name} on this document alone: {crash}"))


def _split_all(stage: Stage, settings: PipelineSettings, items: list[StageInput], cpus: float) -> list[dict[str, Any]]:
    """Every document's parts, split in tasks (a split reads a file's page or chunk count): a few
    small rows per document, in the batch's order. One task per CPU of the worker nodes, each over a
    run of the batch: a task per document would start a worker process per concurrent task (four per
    CPU at a quarter CPU each), and each imports the stage's libraries, which costs more than the split."""
    import ray

    split = ray.remote(_split_slice).options(num_cpus=settings.split_cpus, **task_options(settings))
    rows = _document_rows(items)
    tasks = max(1, min(len(rows), int(cpus)))
    size = -(-len(rows) // tasks)  # ceiling: the runs in order, the last one shorter
    refs = [split.remote(rows[start : start + size], stage=stage, settings=settings)
            for start in range(0, len(rows), size)]
    return [part for parts in ray.get(refs) for part in parts]


def _document_rows(items: list[StageInput]) -> list[dict[str, Any]]:
    """What a split reads of each document."""
    return [{"doc_id": item.document.doc_id, "doc": item.doc_input().model_dump_json()} for item in items]


def _split_slice(rows: list[dict[str, Any]], *, stage: Stage, settings: PipelineSettings) -> list[dict[str, Any]]:
    return [part for row in rows for part in split_rows(row, stage=stage, settings=settings)]


def _pipeline(
    stage: Stage, settings: PipelineSettings, items: list[StageInput], progress: Progress
) -> Iterator[DocumentDone]:
    if not items:
        return
    from include.stages import warm

    cpus = worker_node_cpus(settings)
    pool = getattr(settings, stage.pool).sized_for(cpus)
    steps = {name: (stage.name, stage.runs(settings)) for name in (PartWorker.__name__, "WarmPartWorker")}
    with crashes_named(settings, steps, default_step=f"{stage.name} (splitting)"):
        if warm.is_warm(stage.name, settings):
            # Warm workers split too: they have the stage's libraries loaded, where a split task
            # would start a process of this job and import them first.
            rows = warm.run_parts(stage, settings, _document_rows(items), cpus, progress)
        else:
            import ray.data  # here only: a warm stage's job has no use for its 0.4 s import

            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True  # a document's parts arrive together, in order
            context.enable_progress_bars = False  # the job log gets our progress lines instead
            # One block per part: an actor takes a whole block, so a document's parts in one block
            # would run on one actor (one core) however many the pool has. Splitting before the pool
            # starts also leaves the pool every CPU: no split task waits behind its own actors.
            parts = _split_all(stage, settings, items, cpus)
            rows = ray.data.from_items(parts, override_num_blocks=len(parts)).map_batches(
                PartWorker,
                fn_constructor_kwargs={"stage": stage, "settings": settings},
                batch_size=1,  # a part is already a bounded unit of work
                compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
                num_cpus=pool.actor_cpus,
                memory=pool.actor_memory_mb * 2**20,
                **actor_options(settings),
            ).iter_rows()
        yield from _assembled(stage, settings, items, rows, progress)


def _assembled(stage: Stage, settings: PipelineSettings, items: list[StageInput], rows: Iterable[dict[str, Any]],
               progress: Progress) -> Iterator[DocumentDone]:
    """Each document once, from its parts' rows as they stream in (in order)."""
    by_id = {item.document.doc_id: item for item in items}
    limit = settings.max_seconds_per_document

    def done(doc_id: str, payloads: list[Any], error: DocumentError | None, seconds: float) -> DocumentDone:
        # Parts run side by side on several actors: their seconds together are the document's work.
        if error is None and limit is not None and seconds > limit:
            error = OverTimeLimit.of(stage.name, by_id[doc_id].document, settings)
        return DocumentDone(by_id[doc_id], payloads, error, seconds)

    seen: set[str] = set()
    current: str | None = None
    collected: list[Any] = []
    error: DocumentError | None = None
    seconds = 0.0
    for row in rows:
        if row["doc_id"] != current:
            if current is not None:
                yield done(current, collected, error, seconds)
            current, collected, error, seconds = row["doc_id"], [], None, 0.0
            seen.add(current)
        seconds += row["seconds"]
        if row["error"]:
            error = error or (BadFileError if row["bad_file"] else DocumentError)(row["error"])
        elif row["index"] != _NO_PART:
            collected.append(json.loads(row["payload"]))
            progress.add(units=row["units"])
    if current is not None:
        yield done(current, collected, error, seconds)
    if missing := set(by_id) - seen:
        # Every split sends at least one row per document: a gap is a bug, and retryable.
        raise RuntimeError(f"{len(missing)} document(s) came back from Ray Data with no result: {sorted(missing)}")
