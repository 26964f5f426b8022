"""What the project's DAGs share: their tasks' retry policy, their Ray tasks' options, and the sensor
that waits for work."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

TASK_DEFAULTS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    # A task past this is killed, and its Ray job stopped with it (on_kill).
    "execution_timeout": timedelta(hours=2),
}


def ray_job_options() -> dict[str, Any]:
    """What every Ray task of the project's DAGs is given: it defers while its job runs, and its job's
    driver (which assembles each document's outputs) runs where the heavy work does, never on the
    head, when worker nodes offer ``PIPELINE_RAY_WORKER_RESOURCE``."""
    from include.control.settings import get_control_settings
    from include.worker_options import UNITS_PER_WORKER

    settings = get_control_settings()
    resources = {settings.ray_worker_resource: UNITS_PER_WORKER} if settings.ray_worker_resource else None
    return {"deferrable": True, "poll_interval": settings.ray_poll_seconds, "entrypoint_resources": resources}


def work_sensor(task_id: str, *, bucket: str, bucket_key: str,
                has_work: Callable[[list[dict[str, Any]], dict[str, Any] | None], bool]) -> Any:
    """A sensor that waits for *work* under a prefix, not for objects: ``has_work`` gets the listing
    (Key, Size, ETag), an empty one too, and the run's params. No work before the timeout skips the run."""
    from include.control.sensors import S3WorkSensor
    from include.control.settings import get_control_settings

    settings = get_control_settings()
    return S3WorkSensor(
        task_id=task_id,
        bucket_name=bucket,
        bucket_keys=bucket_key,
        has_work=has_work,
        aws_conn_id="aws_default",
        poke_interval=settings.sensor_poke_seconds,
        timeout=settings.sensor_timeout_seconds,
        mode="reschedule",
        soft_fail=True,  # nothing to do skips the run instead of failing it
    )
