"""Warm workers: a stage's models (and the query side's generator) stay loaded between jobs.

With ``PIPELINE_WARM_IDLE_SECONDS`` above 0, the workers of the stages in ``PIPELINE_WARM_STAGES``
are named detached actors (namespace ``pipeline-warm``), not a Ray Data pool that lives and dies
with its job. The first job of a stage creates them and each loads its model once; later jobs of
any batch or run find them by name and send them parts (``fed_in_order``: each part to the
next free actor, results in order), so a small drop pays the job's start-up and no model load.
The stage jobs stay one Ray job per stage and batch. The query job's generator is kept warm the
same way (``include.query.pipeline.WarmGenerator``, by the name ``generate`` in the warm stages), and
so is the quality gates' validator (``WarmValidator``, by the name ``quality``): a job builds each
document's checks (a small frame of safe columns) and the validator, GX loaded, runs them.

- **Which actors.** A pool's name holds a hash of the job's settings, of its Python code (the
  ``include`` package), of its runtime environment (but the working_dir and variables) and of the
  worker class: a job with other settings, code or environment gets other actors, and the old
  ones retire once idle. Its size is the stage's ``PoolSettings``
  (by default the worker nodes' CPUs over ``actor_cpus``).
- **Resources.** A warm actor reserves its memory (``actor_memory_mb``) but no CPU, and runs
  ``actor_cpus`` threads: idle it uses none, and the pools of all five stages, kept side by side,
  would otherwise hold every CPU of a small cluster and leave the next stage's job waiting.
- **Started ahead.** A stage job with documents to run starts the next stage's workers that are not
  alive, and the validator of that stage's gate (in the background, and only if the nodes have room
  for them): their models load while this job works, and the next job finds them ready, their
  loads counted as its own. On a cold
  cluster each job would otherwise start its pool after the job before it ended.
- **Idle scale-down.** An actor that ran no part for ``warm_idle_seconds`` kills itself (its name
  is then free). A job first *leases* each actor, which restarts its idle clock, so an actor never
  retires between being found and being used; one found retiring is replaced.
- **Memory.** A pool whose new workers no node takes (Ray's state API shows them with no worker
  process yet, and no node has the memory they ask for left: the idle pools of other stages
  reserve it) retires idle workers of other pools as a cache evicts: the longest idle first, and
  only as many as free the memory it is short of. The stage that runs now gets the memory (and the
  stage that ran just before keeps its pool, for the next drop); the evicted ones load again when
  next needed. Where the state API cannot tell waiting for room from loading
  a model, that is done after ``warm_place_seconds``.
- **Crashes.** As in a Ray Data pool: a dead actor is restarted (a model load) and its part
  retried, up to ``worker_crash_retries``; past that the job's crash handling takes over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

import include
from include.quality.expectations import Checks
from include.settings import PipelineSettings, PoolSettings
from include.stages.base import Progress, Stage
from include.stages.execution import PartWorker, split_rows
from include.worker_options import THREADS_ENV, actor_options, worker_node_cpus

if TYPE_CHECKING:
    from include.backends.vector_stores import EmbedderInfo
    from include.stages.base import StoreAccess

log = logging.getLogger(__name__)

NAMESPACE = "pipeline-warm"
# Leasing an actor that is retiring fails; a new one takes its name once Ray has it dead.
_LEASE_ATTEMPTS = 20
_LEASE_PAUSE_SECONDS = 0.5
# A worker that ran a part this recently is in use by a job (its next part is on its way).
_EVICTION_GRACE_SECONDS = 2.0
# How often a pool whose workers are not all ready checks whether they wait for room.
_PLACEMENT_POLL_SECONDS = 2.0


class KeptWarm:
    """What makes an actor a warm worker: the lease, the idle clock and retiring. Mixed into an actor
    class whose ``__init__`` loads its model, then calls ``KeptWarm.__init__``, and whose work runs in
    ``self.working()``. Its calls run one at a time on the process's main thread, as a Ray Data
    actor's do (a native crash in a call kills it then and there): a lease waits for the call in
    flight, at most one per job sharing the actor."""

    def __init__(self, what: str, idle_seconds: float) -> None:
        self._what = what
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._last_used = time.monotonic()
        self._busy = 0
        self._loads_unreported = 1  # the load its __init__ did (again after a restart)
        threading.Thread(target=self._retire_when_idle, name="retire-when-idle", daemon=True).start()

    def lease(self) -> int:
        """Restart the idle clock; the model loads no lease has reported yet (1 for a new actor)."""
        with self._lock:
            self._last_used = time.monotonic()
            loads, self._loads_unreported = self._loads_unreported, 0
        return loads

    @contextmanager
    def working(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._last_used = time.monotonic()

    def idleness(self) -> tuple[float | None, float]:
        """Seconds since its last use (None while a job uses it), and the memory it reserves: what an
        eviction weighs."""
        with self._lock:
            idle = None if self._busy else time.monotonic() - self._last_used
        return idle, ray.get_runtime_context().get_assigned_resources().get("memory", 0.0)

    def retire_if_idle(self) -> bool:
        """Retire now unless a job is using it (a call within the last moment): another pool needs
        the memory it holds."""
        return self._retire(_EVICTION_GRACE_SECONDS, "its memory is wanted by another pool")

    def _retire_when_idle(self) -> None:
        while not self._retire(self._idle_seconds, f"idle for {self._idle_seconds:.0f}s"):
            time.sleep(min(self._idle_seconds, 5.0) / 2)

    def _retire(self, idle_seconds: float, why: str) -> bool:
        with self._lock:
            if self._busy or time.monotonic() - self._last_used < idle_seconds:
                return False
            log.info("%s worker retiring (%s): its model unloads", self._what, why)
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            return True


def use_threads(threads: int) -> None:
    """A warm worker reserves no CPU: its model runs the threads its pool was sized for. Called
    before the model loads."""
    os.environ[THREADS_ENV] = str(threads)


class WarmPartWorker(PartWorker, KeptWarm):
    """A stage's worker that outlives its job."""

    def __init__(self, stage: Stage, settings: PipelineSettings, threads: int) -> None:
        use_threads(threads)
        PartWorker.__init__(self, stage, settings)
        KeptWarm.__init__(self, stage.name, settings.warm_idle_seconds)

    def split(self, row: dict[str, Any], stage: Stage) -> list[dict[str, Any]]:
        """One document's parts, by the job's stage (its code, which names the pool, is this actor's;
        a test's stand-in stage may split otherwise), here where the stage's libraries are loaded."""
        with self.working():
            return split_rows(row, stage=stage, settings=self._settings)

    def run(self, row: dict[str, Any]) -> dict[str, Any]:
        """One part's row (as ``PartWorker`` takes a batch of one)."""
        with self.working():
            out = self({name: [value] for name, value in row.items()})
            return {name: values[0] for name, values in out.items()}


def is_warm(name: str, settings: PipelineSettings) -> bool:
    """Whether the workers of ``name`` (a stage, or the query side's ``generate``) are kept warm."""
    return settings.warm_idle_seconds > 0 and name in settings.warm_stages


@functools.cache
def _code_digest() -> str:
    """A digest of the job's Python code (the ``include`` package it shipped): a deploy that changes
    it gets new workers; one that changes only documents or DAGs keeps them."""
    package = Path(include.__file__).parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(f"{source.relative_to(package)}\n".encode() + source.read_bytes())
    return digest.hexdigest()


def _job_environment() -> str:
    """The job's runtime environment but its ``working_dir`` and variables: a job with other modules,
    packages or a worker setup hook must not use workers started without them. The code digest
    stands for the working_dir (whose hash changes with any file in it, a document or a log), the
    settings for the variables (the others name the job: its submission id, its result's URI)."""
    environment = dict(ray.get_runtime_context().runtime_env) if ray.is_initialized() else {}
    for per_job in ("working_dir", "env_vars"):
        environment.pop(per_job, None)
    return json.dumps(environment, sort_keys=True, default=str)


def pool_name(name: str, settings: PipelineSettings, worker: type) -> str:
    """``<name>-<hash>``: the same settings, code, runtime environment and worker class, the same actors."""
    blob = (f"{settings.model_dump_json()}\n{_code_digest()}\n{_job_environment()}\n"
            f"{worker.__module__}.{worker.__qualname__}").encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclass(frozen=True)
class _Pool:
    """How the actors of one warm pool are named and created."""

    names: list[str]
    options: dict[str, Any]
    threads: int

    @classmethod
    def of(cls, name: str, pool: PoolSettings, settings: PipelineSettings) -> _Pool:
        options = dict(namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
                       memory=pool.actor_memory_mb * 2**20, **actor_options(settings))
        return cls([f"{name}-{number}" for number in range(pool.max_actors)], options,
                   max(1, math.ceil(pool.actor_cpus)))

    def actor(self, worker: type[KeptWarm], actor_name: str, *args: Any) -> ray.actor.ActorHandle:
        """The actor of that name, found, or created with ``args`` and its threads (its model loads)."""
        return _actor_class(worker).options(name=actor_name, **self.options).remote(*args, threads=self.threads)


# One Ray actor class per worker class: each new one exports the class to the cluster again.
_actor_class = functools.cache(ray.remote)


def leased_pool(worker: type[KeptWarm], name: str, pool: PoolSettings, settings: PipelineSettings,
                *args: Any) -> tuple[list[ray.actor.ActorHandle], int]:
    """``pool.max_actors`` warm actors of ``worker`` (a ``KeptWarm`` class) named ``name-<n>``,
    found or created with ``args`` and their threads, each leased; and how many models they loaded
    since the last lease (a job's model loads)."""
    spec = _Pool.of(name, pool, settings)
    names, options = spec.names, spec.options

    def lease(actor_name: str) -> tuple[ray.actor.ActorHandle, ray.ObjectRef]:
        actor = spec.actor(worker, actor_name, *args)
        return actor, actor.lease.remote()

    leases = dict(zip(names, map(lease, names), strict=True))
    waiting = {ref: actor_name for actor_name, (_, ref) in leases.items()}
    started = time.monotonic()
    while waiting:
        _, pending = ray.wait(list(waiting), num_returns=len(waiting), timeout=_PLACEMENT_POLL_SECONDS)
        waiting = {ref: waiting[ref] for ref in pending}
        unplaced = _unplaced(set(waiting.values()))
        # A worker with no process yet may be starting one (its memory already taken on a node):
        # it waits for room only if the nodes have none left for it.
        short = bool(unplaced) and not _room_for(unplaced, options["memory"], settings)
        if short or (unplaced is None and waiting and time.monotonic() - started > settings.warm_place_seconds):
            # Idle pools of others may hold the memory these wait for: the longest idle retire (and
            # load again when next needed). Asked again each time, as a pool in use now is idle later.
            short_of = (unplaced or len(waiting)) * options["memory"]
            retired = _evict_idle_workers(except_names=set(names), memory=short_of)
            log.info("%s: %s of %d warm worker(s) wait for room: %d idle warm worker(s) of other pools retired, "
                     "the longest idle first", name, unplaced or len(waiting), len(leases), retired)
            started = time.monotonic()
    actors, loads = [], 0
    for actor_name, (actor, ref) in leases.items():
        for attempt in range(_LEASE_ATTEMPTS):
            try:
                loads += ray.get(ref)
                break
            except ray.exceptions.RayActorError:
                if attempt == _LEASE_ATTEMPTS - 1:
                    raise
                time.sleep(_LEASE_PAUSE_SECONDS)  # it was retiring: its name frees in a moment
                actor, ref = lease(actor_name)
        actors.append(actor)
    log.info("%d warm worker(s) (%s), %d model load(s) this job", len(actors), name, loads)
    return actors, loads


def start_pool(worker: type[KeptWarm], name: str, pool: PoolSettings, settings: PipelineSettings,
               *args: Any) -> int:
    """Create the actors of ``leased_pool(worker, name, pool, settings, *args)`` that are not alive,
    without waiting for them, if the nodes have room for them now; how many were created. Their models
    load while another job runs, and the job they are for finds them (and counts their loads) as if it
    had created them."""
    spec = _Pool.of(name, pool, settings)
    missing = [actor_name for actor_name in spec.names if actor_name not in worker_names()]
    if not missing or not _room_for(len(missing), spec.options["memory"], settings):
        return 0
    for actor_name in missing:
        spec.actor(worker, actor_name, *args)
    log.info("%d warm worker(s) (%s) started ahead of their job", len(missing), name)
    return len(missing)


def stage_pool(stage: Stage, settings: PipelineSettings, cpus: float) -> tuple[str, PoolSettings]:
    """The name and size of a stage's warm pool on worker nodes of ``cpus`` CPUs."""
    return pool_name(stage.name, settings, stage.worker), getattr(settings, stage.pool).sized_for(cpus)


def _validator_pool(settings: PipelineSettings) -> tuple[str, PoolSettings]:
    return pool_name("quality", settings, WarmValidator), settings.quality.validator_pool.sized_for(1)


def start_next_stage(stage_name: str, settings: PipelineSettings) -> threading.Thread | None:
    """Start the warm workers of the stage after ``stage_name`` (the next job of this batch), and the
    validator of its gate, in the background while this job runs: on a cold cluster that job would
    otherwise start them, and wait for their models to load, after this one ends. Nothing when that
    stage is not kept warm."""
    from include.fingerprints import STAGE_ORDER
    from include.stages import STAGES

    position = STAGE_ORDER.index(stage_name) + 1
    if position == len(STAGE_ORDER) or not is_warm(STAGE_ORDER[position], settings):
        return None

    def start() -> None:
        following = STAGES[STAGE_ORDER[position]]  # imports that stage's module: off this job's path
        try:
            start_pool(WarmPartWorker, *stage_pool(following, settings, worker_node_cpus(settings)), settings,
                       following, settings)
            if following.gate is not None and settings.quality.mode(following.name) != "off" \
                    and is_warm("quality", settings):
                start_pool(WarmValidator, *_validator_pool(settings), settings, settings)
        except Exception as exc:  # the next job starts them itself
            log.warning("could not start the %s stage's warm workers ahead: %s", following.name, exc)

    thread = threading.Thread(target=start, name="start-next-stage", daemon=True)
    thread.start()
    return thread


def _unplaced(actor_names: set[str]) -> int | None:
    """How many of these actors no node has taken yet (no worker process: they wait for room, while a
    placed one may be loading its model); None when the cluster cannot tell (no state API)."""
    from ray.util.state import list_actors

    if not actor_names:
        return 0
    try:
        actors = list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000, detail=True,
                             filters=[("ray_namespace", "=", NAMESPACE), ("state", "=", "PENDING_CREATION")],
                             raise_on_missing_output=False)
    except Exception as exc:  # the dashboard's state API is down or absent: the placement wait decides
        log.debug("cannot list actors: %s", exc)
        return None
    return sum(1 for actor in actors if actor.name in actor_names and not actor.pid)


def _room_for(actors: int, memory: int, settings: PipelineSettings) -> bool:
    """Whether ``actors`` more actors of ``memory`` bytes each fit now on the nodes they may use."""
    # Per node: Ray's public call sums the cluster, the head's memory with it. Ray's own utilities
    # read this one (check it on upgrading Ray).
    from ray._private.state import available_resources_per_node

    resource = settings.ray_worker_resource
    return sum(int(free.get("memory", 0) // memory) for free in available_resources_per_node().values()
               if not resource or resource in free) >= actors


def worker_names() -> set[str]:
    """The names of the warm workers alive in the cluster (every pool's)."""
    return {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == NAMESPACE}


def _evict_idle_workers(except_names: set[str], memory: float) -> int:
    """Retire idle warm workers outside ``except_names``, the longest idle first (a cache's least
    recently used), until they free ``memory`` bytes; how many retired. A worker that does not answer
    within a moment is busy (its calls wait for the part it runs): it stays."""
    handles = {}
    for other in worker_names() - except_names:
        try:
            handles[other] = ray.get_actor(other, namespace=NAMESPACE)
        except ValueError:
            pass  # retired meanwhile
    asked = {handle.idleness.remote(): handle for handle in handles.values()}
    answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=_EVICTION_GRACE_SECONDS)
    idle = []
    for ref in answered:
        try:
            seconds, reserved = ray.get(ref)
        except ray.exceptions.RayActorError:
            continue  # retired meanwhile
        if seconds is not None and seconds >= _EVICTION_GRACE_SECONDS:
            idle.append((seconds, reserved, asked[ref]))
    freed, retired = 0.0, 0
    for _seconds, reserved, handle in sorted(idle, key=lambda entry: -entry[0]):
        if freed >= memory:
            break
        try:
            gone = ray.get(handle.retire_if_idle.remote(), timeout=_EVICTION_GRACE_SECONDS * 5)
        except ray.exceptions.RayActorError:
            gone = True  # it killed itself before its answer left
        except ray.exceptions.GetTimeoutError:
            gone = False
        if gone:
            freed += reserved
            retired += 1
    return retired


class WarmValidator(KeptWarm):
    """The quality gates' validator, Great Expectations loaded once: a stage job that sent its checks
    to GX in its own process would import it first (about 3 s, more than a small drop's work). It
    also reaches the vector store for the job's driver (``StoreAccess``: the gates' reads, load's
    clean-up), with a client it keeps."""

    def __init__(self, settings: PipelineSettings, threads: int) -> None:
        from include.quality.expectations import context

        use_threads(threads)
        context()
        self._settings = settings
        KeptWarm.__init__(self, "quality", settings.warm_idle_seconds)

    def validate(self, checks: Checks) -> dict[str, Any]:
        from include.quality.expectations import validate

        with self.working():
            return validate(checks)

    def store(self, method: str, *args: Any) -> Any:
        """A ``StoreAccess`` method, on the kept client."""
        if method not in _STORE_ACCESS:
            raise AttributeError(f"the validator reaches the store for {sorted(_STORE_ACCESS)}, not {method!r}")
        from include.backends.vector_stores import process_vector_store

        with self.working():
            return getattr(process_vector_store(self._settings), method)(*args)


class WarmValidation:
    """A stage job's ``Validator``: the warm validator, found, or started (GX loaded) on first use."""

    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._leased: list[ray.actor.ActorHandle] = []

    def prepare(self, *, validates: bool) -> None:
        """Lease it while the stage's workers start: on a cold cluster its start (GX's import, about
        3 s) would otherwise wait for the first documents done (validated, or reaching the store)."""
        def lease() -> None:
            try:
                self._actor()
            except Exception as exc:  # the first validation leases again, and fails the job if it must
                log.warning("the warm validator could not be leased ahead: %s", exc)

        threading.Thread(target=lease, name="lease-validator", daemon=True).start()

    def _actor(self) -> ray.actor.ActorHandle:
        with self._lock:
            if not self._leased:
                actors, _ = leased_pool(WarmValidator, *_validator_pool(self._settings), self._settings,
                                        self._settings)
                self._leased.extend(actors)
            return self._leased[0]

    def call(self, method: str, *args: Any) -> Any:
        """A method of the validator, leased again once if it is gone: it retires when idle, and a
        long first document may keep a job from it longer than that since ``prepare``."""
        try:
            return ray.get(getattr(self._actor(), method).remote(*args))
        except ray.exceptions.RayActorError:
            with self._lock:
                self._leased.clear()
        return ray.get(getattr(self._actor(), method).remote(*args))

    def validate(self, checks: Checks) -> dict[str, Any]:
        return self.call("validate", checks)

    def store(self) -> StoreAccess:
        return _StoreViaValidator(self)


_STORE_ACCESS = frozenset({"embedder", "documents_records", "delete_stale"})


@dataclass(frozen=True)
class _StoreViaValidator:
    validator: WarmValidation

    def embedder(self) -> EmbedderInfo | None:
        return self.validator.call("store", "embedder")

    def documents_records(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.validator.call("store", "documents_records", doc_ids)

    def delete_stale(self, source_uri: str, keep_ids: set[str]) -> int:
        return self.validator.call("store", "delete_stale", source_uri, keep_ids)


def validator(settings: PipelineSettings) -> WarmValidation | None:
    """Where a stage job has its quality gates' checks validated and their store reads made: the warm
    validator, or None (in the job's own process) when 'quality' is not kept warm."""
    return WarmValidation(settings) if is_warm("quality", settings) else None


def run_parts(stage: Stage, settings: PipelineSettings, documents: list[dict[str, Any]], cpus: float,
              progress: Progress) -> Iterator[dict[str, Any]]:
    """Each part's result row, in the parts' order, from the stage's warm actors: they split the
    documents (each to the next free actor), then run the parts."""
    actors, loads = leased_pool(WarmPartWorker, *stage_pool(stage, settings, cpus), settings, stage, settings)
    progress.add(model_loads=loads)
    splits = fed_in_order(actors, lambda actor, row: actor.split.remote(row, stage), documents)
    parts = [part for split in splits for part in split]
    yield from fed_in_order(actors, lambda actor, row: actor.run.remote(row), parts)


def fed_in_order(actors: list[ray.actor.ActorHandle], call: Callable[[ray.actor.ActorHandle, Any], ray.ObjectRef],
                 values: Iterable[Any]) -> Iterator[Any]:
    """``call(actor, value)``'s result for each value, in the values' order, from actors kept fed.

    ``ray.util.ActorPool.map`` gives an actor its next value only once the caller has taken the
    result of the value that actor ran, and takes results in order: an actor done with a short part
    idles while another runs a long one ahead of it, and both wait while the job's driver writes a
    document out. Here a thread gives each actor the next value as soon as its call ends, whatever the
    caller is waiting for or doing (one call at a time per actor: a value queued behind a long part
    would wait while another actor idles). Values not yet given out are not once the caller stops."""
    values = list(values)
    results: dict[int, ray.ObjectRef] = {}
    arrived = threading.Condition()
    stopped = threading.Event()
    failed: list[BaseException] = []

    def dispatch() -> None:
        queue = iter(enumerate(values))
        running: dict[ray.ObjectRef, tuple[int, ray.actor.ActorHandle]] = {}

        def feed(actor: ray.actor.ActorHandle) -> None:
            if not stopped.is_set() and (value := next(queue, None)) is not None:
                running[call(actor, value[1])] = (value[0], actor)

        try:
            for actor in actors:
                feed(actor)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                if len(running) > 1:  # and every other call done by now
                    ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
                freed = [running.pop(ref) for ref in ready]
                with arrived:
                    results.update((index, ref) for ref, (index, _) in zip(ready, freed, strict=True))
                    arrived.notify()
                for _, actor in freed:
                    feed(actor)
        except BaseException as exc:  # the caller raises it
            with arrived:
                failed.append(exc)
                arrived.notify()

    threading.Thread(target=dispatch, name="feed-warm-actors", daemon=True).start()
    try:
        for index in range(len(values)):
            with arrived:
                arrived.wait_for(lambda: index in results or failed)  # noqa: B023 (called at once)
                if index not in results:
                    raise failed[0]
                ref = results.pop(index)
            yield ray.get(ref)
    finally:
        stopped.set()
