"""Warm workers: a stage's second job finds its workers loaded (the loads counted by the workers
themselves), jobs with other settings get other workers, and an idle pool retires."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import pytest

from include.contract import DocumentRef
from include.settings import PoolSettings
from include.stages import STAGES
from include.stages.base import Progress, StageInput
from include.stages.execution import run_on_ray


class SlowToLoad:
    """A stage worker whose model takes a moment to load; it says which process ran each part."""

    def __init__(self, settings) -> None:
        time.sleep(0.5)

    def __call__(self, doc, part):
        return {"part": part["n"], "pid": os.getpid()}


def _run(settings, stage, name: str):
    item = StageInput(DocumentRef(doc_id=name, source_uri=f"s3://documents/inbox/{name}.pdf",
                                  content_sha256="0" * 64, size_bytes=1))
    with Progress(stage.name, "chunks", 1, 60) as progress:
        [done] = run_on_ray(stage, settings, [item], progress)
    assert done.error is None, done.error
    assert [payload["part"] for payload in done.payloads] == list(range(4))
    return progress.counts["model_loads"], {payload["pid"] for payload in done.payloads}


def _pool_actors(name_start: str) -> set[str]:
    from include.stages.warm import worker_names

    return {name for name in worker_names() if name.startswith(name_start)}


def test_a_second_job_loads_no_model_and_an_idle_pool_retires(settings, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not shipped to workers
    stage = replace(STAGES["embed"], split=lambda doc, settings: [{"units": 1, "n": n} for n in range(4)],
                    worker=SlowToLoad)
    warm = settings.model_copy(update={"warm_idle_seconds": 4.0, "warm_stages": frozenset({"embed"}),
                                       "embed_pool": PoolSettings(max_actors=2, actor_memory_mb=256)})

    first_loads, first_pids = _run(warm, stage, "first")
    assert first_loads == 2 and len(first_pids) == 2  # a cold pool: each actor loads once
    second_loads, second_pids = _run(warm, stage, "second")
    assert second_loads == 0 and second_pids == first_pids  # the same processes, nothing loaded again
    assert len(_pool_actors("embed-")) == 2

    # Other settings shape other workers: their own pool, loaded once.
    other = warm.model_copy(update={"embed_batch_size": warm.embed_batch_size + 1})
    other_loads, other_pids = _run(other, stage, "other")
    assert other_loads == 2 and not other_pids & first_pids

    deadline = time.monotonic() + 60
    while _pool_actors("embed-"):
        assert time.monotonic() < deadline, _pool_actors("embed-")
        time.sleep(0.5)
    # Retired, not lost: the next job starts the pool again.
    again_loads, again_pids = _run(warm, stage, "again")
    assert again_loads == 2 and not again_pids & first_pids


def test_with_warm_workers_off_a_job_starts_its_own_pool_and_leaves_no_actor(settings, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = replace(STAGES["embed"], split=lambda doc, settings: [{"units": 1, "n": n} for n in range(4)],
                    worker=SlowToLoad)
    cold = settings.model_copy(update={"warm_idle_seconds": 0.0,
                                       "embed_pool": PoolSettings(max_actors=1, actor_memory_mb=256)})
    before = _pool_actors("embed-")
    _run(cold, stage, "cold")
    assert not _pool_actors("embed-") - before


def test_a_new_pool_with_room_leaves_the_idle_pools_of_other_stages_warm(settings, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Its workers have no process for a moment while they start: that is not waiting for room.
    small = PoolSettings(max_actors=2, actor_memory_mb=256)
    warm = settings.model_copy(update={"warm_idle_seconds": 600.0, "warm_stages": frozenset({"embed", "enrich"}),
                                       "embed_pool": small, "enrich_pool": small})
    parts = lambda doc, settings: [{"units": 1, "n": n} for n in range(4)]  # noqa: E731
    embed_loads, embed_pids = _run(warm, replace(STAGES["embed"], split=parts, worker=SlowToLoad), "embedded")
    assert embed_loads == 2
    assert _run(warm, replace(STAGES["enrich"], split=parts, worker=SlowToLoad), "enriched")[0] == 2
    assert len(_pool_actors("embed-")) == 2 and len(_pool_actors("enrich-")) == 2
    assert _run(warm, replace(STAGES["embed"], split=parts, worker=SlowToLoad), "embedded again") == (0, embed_pids)


def test_a_pool_with_no_room_makes_the_idle_pools_of_other_stages_retire(settings, ray_local, caplog):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Each pool's one actor reserves over half of the cluster's memory: two cannot be placed at once.
    most = int(ray.cluster_resources()["memory"] / 2**20 * 0.6)
    big = PoolSettings(max_actors=1, actor_memory_mb=most)
    # A worker that no node takes is seen waiting for room (the state API): no placement wait (600 s).
    warm = settings.model_copy(update={"warm_idle_seconds": 600.0, "warm_place_seconds": 600.0,
                                       "warm_stages": frozenset({"embed", "enrich"}),
                                       "embed_pool": big, "enrich_pool": big})
    parts = lambda doc, settings: [{"units": 1, "n": n} for n in range(4)]  # noqa: E731
    embed = replace(STAGES["embed"], split=parts, worker=SlowToLoad)
    enrich = replace(STAGES["enrich"], split=parts, worker=SlowToLoad)

    assert _run(warm, embed, "embedded")[0] == 1
    assert _pool_actors("embed-")
    caplog.set_level("INFO", logger="include.stages.warm")
    assert _run(warm, enrich, "enriched")[0] == 1  # placed once the idle embed worker retired
    assert "1 of 1 warm worker(s) wait for room: 1 idle warm worker(s) of other pools retired" in caplog.text
    assert not _pool_actors("embed-") and _pool_actors("enrich-")
    assert _run(warm, embed, "embedded again")[0] == 1  # and back: loaded once more


def test_a_pools_name_is_the_same_in_every_process_and_changes_with_a_setting():
    import subprocess

    code = ("from include.settings import PipelineSettings; from include.stages import STAGES; "
            "from include.stages.warm import pool_name; import sys; "
            "stage = STAGES['embed']; "
            "print(pool_name(stage.name, PipelineSettings(embed_batch_size=int(sys.argv[1])), stage.worker))")
    names = {(seed, size): subprocess.run([sys.executable, "-c", code, size], capture_output=True, text=True,
                                          check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
             for seed in ("1", "2") for size in ("32", "16")}
    assert names[("1", "32")] == names[("2", "32")] != names[("1", "16")] == names[("2", "16")]
    assert names[("1", "32")].startswith("embed-")


def test_a_pool_short_of_room_retires_the_longest_idle_workers_first_and_no_more_than_it_needs(
        settings, ray_local, caplog):
    """As a cache evicts: the pool used longest ago goes, the one a job used a moment ago stays (it is
    the next stage's neighbour in a run, whose next drop wants it warm)."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Two of these fit beside each other, not three.
    third = PoolSettings(max_actors=1, actor_memory_mb=int(ray.cluster_resources()["memory"] / 2**20 * 0.36))
    warm = settings.model_copy(update={"warm_idle_seconds": 600.0, "warm_place_seconds": 600.0,
                                       "warm_stages": frozenset({"chunk", "enrich", "embed"}),
                                       "chunk_pool": third, "enrich_pool": third, "embed_pool": third})
    parts = lambda doc, settings: [{"units": 1, "n": n} for n in range(4)]  # noqa: E731
    stages = {name: replace(STAGES[name], split=parts, worker=SlowToLoad) for name in ("chunk", "enrich", "embed")}

    assert _run(warm, stages["chunk"], "chunked")[0] == 1
    time.sleep(3)  # idle longer than the eviction's grace, and longer than enrich will be
    assert _run(warm, stages["enrich"], "enriched")[0] == 1
    time.sleep(2.5)
    caplog.set_level("INFO", logger="include.stages.warm")
    assert _run(warm, stages["embed"], "embedded")[0] == 1
    assert "1 idle warm worker(s) of other pools retired" in caplog.text
    assert not _pool_actors("chunk-") and _pool_actors("enrich-") and _pool_actors("embed-")


def test_a_pool_started_ahead_of_its_job_is_the_pool_its_job_leases_with_its_loads_counted(settings, ray_local):
    import ray

    from include.stages.warm import WarmPartWorker, stage_pool, start_pool

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = replace(STAGES["load"], split=lambda doc, settings: [{"units": 1, "n": n} for n in range(4)],
                    worker=SlowToLoad)
    warm = settings.model_copy(update={"warm_idle_seconds": 600.0, "warm_stages": frozenset({"load"}),
                                       "load_pool": PoolSettings(max_actors=2, actor_memory_mb=256)})

    def start() -> int:
        return start_pool(WarmPartWorker, *stage_pool(stage, warm, cpus=2), warm, stage, warm)

    assert start() == 2
    assert start() == 0  # alive, loading: not started twice
    loads, pids = _run(warm, stage, "loaded")
    assert loads == 2 and len(pids) == 2  # the models they loaded ahead are counted by the job they were for
    assert len(_pool_actors("load-")) == 2
    assert _run(warm, stage, "loaded again") == (0, pids)


class Sleeper:
    def nap(self, seconds: float) -> tuple[float, int, float]:
        started = time.monotonic()  # one clock for every process of the machine
        time.sleep(seconds)
        return seconds, os.getpid(), started


def test_warm_actors_are_fed_each_as_it_frees_and_their_results_come_back_in_order(ray_local):
    import ray

    from include.stages.warm import fed_in_order

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actors = [ray.remote(Sleeper).remote() for _ in range(2)]
    ray.get([actor.nap.remote(0) for actor in actors])  # started
    naps = [3.0] + [0.1] * 6
    results = list(fed_in_order(actors, lambda actor, seconds: actor.nap.remote(seconds), naps))

    assert [seconds for seconds, _, _ in results] == naps
    long_pid, long_started = results[0][1], results[0][2]
    # The other actor ran every short nap while the long one ran: none waited for its result, or
    # behind it.
    assert {pid for _, pid, _ in results[1:]} == {pid for _, pid, _ in results} - {long_pid}
    assert max(started for _, _, started in results[1:]) < long_started + 3.0


def test_a_stage_job_starts_the_next_stage_ahead_only_when_that_stage_is_kept_warm(settings):
    from include.fingerprints import STAGE_ORDER
    from include.stages.warm import start_next_stage

    every = settings.model_copy(update={"warm_idle_seconds": 600.0, "warm_stages": frozenset(STAGE_ORDER)})
    assert start_next_stage("load", every) is None  # the last stage: nothing after it
    assert start_next_stage("extract", every.model_copy(update={"warm_stages": frozenset({"extract"})})) is None
    assert start_next_stage("extract", every.model_copy(update={"warm_idle_seconds": 0.0})) is None


def test_the_gates_checks_are_validated_by_one_warm_validator_as_they_would_be_in_the_job(settings, ray_local):
    from include.quality.expectations import failures, validate
    from include.quality.suites import chunk_checks
    from include.stages.warm import validator

    warm = settings.model_copy(update={"warm_idle_seconds": 60.0, "warm_stages": frozenset({"quality"})})
    rows = [{"chunk_id": f"doc#{n}", "text": "A passage.", "tokens": 12 if n else 900, "page_start": 1,
             "page_end": 1} for n in range(3)]
    checks = chunk_checks(rows, doc_id="doc", token_limit=254, pages=1, settings=warm)

    remote = validator(warm).validate(checks)
    assert not remote["success"] and failures(remote) == failures(validate(checks))
    assert "doc#0: tokens=900" in failures(remote)[0]
    assert validator(warm).validate(chunk_checks(rows[1:], doc_id="doc", token_limit=254, pages=1,
                                                 settings=warm))["success"]
    assert len(_pool_actors("quality-")) == 1  # a second job's validator is the same actor
    assert validator(warm.model_copy(update={"warm_stages": frozenset({"embed"})})) is None


def test_the_gates_and_loads_clean_up_reach_the_store_through_the_warm_validator_and_see_what_others_wrote(
        settings, ray_local):
    from include.backends.vector_stores import EmbedderInfo, VectorRecord, process_vector_store
    from include.stages.warm import validator

    warm = settings.model_copy(update={"warm_idle_seconds": 60.0, "warm_stages": frozenset({"quality"}),
                                       "chroma_collection": "gate-reads"})
    through_validator = validator(warm).store()
    assert through_validator.embedder() is None  # its client is made now, before anything is written

    # A load elsewhere (this process, as a load worker would) binds the store and writes a document.
    written = process_vector_store(warm)
    written.bind_embedder(EmbedderInfo("minilm", 3))
    written.upsert([VectorRecord(f"a#{n}", [1.0, 0.0, float(n)], f"passage {n}",
                                 {"doc_id": "a", "chunk_no": n, "source_uri": "s3://b/inbox/a.pdf"})
                    for n in range(3)])
    # Load's clean-up, as its job's driver makes it: the chunk the new chunking no longer makes goes.
    assert validator(warm).store().delete_stale("s3://b/inbox/a.pdf", {"a#0", "a#1"}) == 1
    with pytest.raises(AttributeError, match="not 'upsert'"):  # it writes nothing but that clean-up
        validator(warm).call("store", "upsert", [])

    # The validator's kept client sees the binding made after it was made, and the records.
    assert validator(warm).store().embedder() == EmbedderInfo("minilm", 3)
    records = validator(warm).store().documents_records(["a", "b"])
    assert records == written.documents_records(["a", "b"])
    assert set(records["a"]) == {"a#0", "a#1"} and records["b"] == {}
    assert records["a"]["a#1"]["text"] == "passage 1"


def test_a_validator_leased_ahead_that_retired_idle_before_its_first_use_is_leased_again(settings, ray_local):
    from include.quality.suites import chunk_checks
    from include.stages.warm import WarmValidator, pool_name, validator, worker_names

    warm = settings.model_copy(update={"warm_idle_seconds": 1.0, "warm_stages": frozenset({"quality"})})
    name = pool_name("quality", warm, WarmValidator)
    validation = validator(warm)
    validation.prepare(validates=True)  # as a job does while its workers start
    _wait_for(lambda: any(n.startswith(name) for n in worker_names()), "the validator to start")
    _wait_for(lambda: not any(n.startswith(name) for n in worker_names()), "the idle validator to retire")

    rows = [{"chunk_id": "doc#0", "text": "A passage.", "tokens": 12, "page_start": 1, "page_end": 1}]
    checks = chunk_checks(rows, doc_id="doc", token_limit=254, pages=1, settings=warm)
    assert validation.validate(checks)["success"]


def _wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:.0f}s for {what}"
        time.sleep(0.2)
