"""Stage pools use the machine: a pool sized to the worker nodes' CPUs, and one document's parts
spread over every actor of its pool, still assembled in order."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from include.contract import DocumentRef
from include.settings import PoolSettings
from include.stages import STAGES
from include.stages.base import Progress, StageInput, ranges
from include.stages.execution import run_on_ray
from include.worker_options import worker_node_cpus


def test_an_unsized_pool_takes_the_actors_the_cpus_hold_and_never_fewer_than_its_minimum():
    assert PoolSettings().sized_for(8.0).max_actors == 8
    assert PoolSettings(actor_cpus=1.5).sized_for(4.0).max_actors == 2
    assert PoolSettings(min_actors=3).sized_for(2.0).max_actors == 3
    assert PoolSettings().sized_for(0.0).max_actors == 1  # no worker node yet: the pool waits for one
    assert PoolSettings(max_actors=5).sized_for(2.0).max_actors == 5  # a set size is kept


def test_a_long_documents_parts_end_in_halves_so_its_workers_finish_together_and_every_item_is_in_one():
    def sizes(count: int, size: int) -> list[int]:
        parts = ranges(count, size)
        assert [p["start"] for p in parts] == [0, *[p["stop"] for p in parts[:-1]]] and parts[-1]["stop"] == count
        return [p["units"] for p in parts]

    # Two full parts or fewer: as many parts of the most items as it takes (one worker each).
    assert sizes(5, 64) == [5] and sizes(100, 64) == [64, 36] and sizes(128, 64) == [64, 64]
    # Longer: full parts while more than two are left, then halves of what is left, none under an eighth.
    assert sizes(1210, 64) == [64] * 17 + [61, 31, 15, 15]
    assert sizes(129, 64) == [64, 33, 16, 8, 8]
    assert sizes(600, 32)[-4:] == [28, 14, 7, 7] and max(sizes(600, 32)) == 32
    assert ranges(0, 64) == []


def test_the_cpus_counted_are_those_of_the_nodes_the_work_may_land_on(settings, ray_local):
    assert worker_node_cpus(settings) == 2.0
    assert worker_node_cpus(settings.model_copy(update={"ray_worker_resource": "gpu_box"})) == 0.0


class WhereAmI:
    """A stage worker that takes a while on each part and says which process ran it."""

    def __init__(self, settings) -> None:
        pass

    def __call__(self, doc, part):
        until = time.monotonic() + 0.4
        while time.monotonic() < until:
            sum(range(1000))
        return {"part": part["n"], "pid": os.getpid()}


def test_one_documents_parts_run_on_every_actor_of_the_pool_and_come_back_in_order(settings, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not shipped to workers
    stage = replace(STAGES["embed"], split=lambda doc, settings: [{"units": 1, "n": n} for n in range(8)],
                    worker=WhereAmI)
    # Two actors from the start: which one Ray Data gives a part to is then its choice alone.
    two_actors = settings.model_copy(update={"embed_pool": PoolSettings(min_actors=2, actor_memory_mb=256)})
    item = StageInput(DocumentRef(doc_id="long", source_uri="s3://documents/inbox/long.pdf",
                                  content_sha256="0" * 64, size_bytes=1))
    with Progress("embed", "chunks", 1, 60) as progress:
        [done] = run_on_ray(stage, two_actors, [item], progress)
    assert done.error is None
    assert [payload["part"] for payload in done.payloads] == list(range(8))
    # Before each part had its own block, the document's one block went to one actor.
    assert len({payload["pid"] for payload in done.payloads}) == 2
