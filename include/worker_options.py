"""The Ray options every actor and task of the ingest and query jobs gets: how often a dead worker
is started again (``include.worker_crashes``), and where it may run.

Placement: with ``PIPELINE_RAY_WORKER_RESOURCE`` set, each one asks for a unit of that custom
resource, which only the nodes meant for the heavy work offer, so none lands on the head.
"""

from __future__ import annotations

import math
import os
from typing import Any

from include.settings import PipelineSettings
from include.worker_crashes import actor_crash_limits, task_crash_limits

# Threads of a model in a warm worker, which reserves no CPU (``include.stages.warm``).
THREADS_ENV = "PIPELINE_WARM_WORKER_THREADS"

# What one actor or task asks for. The nodes offer many (1000): this places work without
# bounding it; their CPUs and the pool sizes bound it.
UNITS_PER_WORKER = 1


def on_worker_nodes(settings: PipelineSettings) -> dict[str, Any]:
    name = settings.ray_worker_resource
    return {"resources": {name: UNITS_PER_WORKER}} if name else {}


def actor_options(settings: PipelineSettings) -> dict[str, Any]:
    """``map_batches`` arguments of an actor pool."""
    return {**actor_crash_limits(settings), **on_worker_nodes(settings)}


def task_options(settings: PipelineSettings) -> dict[str, Any]:
    """Ray remote arguments of a task (``flat_map``, reading and writing Parquet)."""
    return {**task_crash_limits(settings), **on_worker_nodes(settings)}


def worker_node_cpus(settings: PipelineSettings) -> float:
    """CPUs of the live nodes this job's actors may land on (``on_worker_nodes``), for the pools that
    size themselves to the cluster (``PoolSettings.sized_for``). Read in the job's driver."""
    import ray

    name = settings.ray_worker_resource
    return sum(node["Resources"].get("CPU", 0.0) for node in ray.nodes()
               if node["Alive"] and (not name or name in node["Resources"]))


def worker_cpus() -> int:
    """Threads a model in this process should run: the CPUs Ray gave this actor or task (rounded up,
    at least one), or, outside Ray's workers (a job driver, a plain process), the machine's. A model
    that runs more threads than its CPUs only makes the actors beside it wait. A warm worker says
    its own (``THREADS_ENV``)."""
    if threads := os.environ.get(THREADS_ENV):
        return int(threads)
    try:
        import ray
    except ImportError:
        return os.cpu_count() or 1
    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
        return max(1, math.ceil(assigned))
    return os.cpu_count() or 1
