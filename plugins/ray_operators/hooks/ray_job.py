"""Hook for a Ray cluster's Job API (the dashboard address, port 8265 by default).

Connection (type ``ray``): host and port of the dashboard, ``schema`` http or
https, and optionally a token in ``password`` for clusters that run with
``RAY_AUTH_MODE=token``. Extra ``{"verify": false}`` skips TLS verification. As an
environment variable::

    AIRFLOW_CONN_RAY_DEFAULT='{"conn_type": "ray", "host": "127.0.0.1", "port": 8265}'
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient


class RayJobHook(BaseHook):
    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    @cached_property
    def address(self) -> str:
        conn = self.get_connection(self.ray_conn_id)
        host = conn.host or "127.0.0.1"
        if "://" in host:
            return host.rstrip("/")
        return f"{conn.schema or 'http'}://{host}:{conn.port or 8265}"

    @cached_property
    def _request_options(self) -> dict[str, Any]:
        conn = self.get_connection(self.ray_conn_id)
        headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else None
        return {"headers": headers, "verify": conn.extra_dejson.get("verify", True)}

    @cached_property
    def client(self) -> JobSubmissionClient:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, **self._request_options)

    def submit(
        self,
        *,
        entrypoint: str,
        submission_id: str,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float = 0,
    ) -> str:
        return self.client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata=metadata,
            entrypoint_num_cpus=entrypoint_num_cpus,
        )

    def find(self, submission_id: str) -> JobDetails | None:
        """The job with this submission id, or None if the cluster has never seen it.

        Asks the Job REST API directly (``GET /api/jobs/<id>``, what the SDK's
        ``get_job_info`` does), because the SDK reports an unknown job only as a
        RuntimeError's text, while the HTTP status tells it exactly.
        """
        import requests
        from ray.job_submission import JobDetails

        options = self._request_options
        response = requests.get(
            f"{self.address}/api/jobs/{quote(submission_id, safe='')}",
            headers=options["headers"], verify=options["verify"], timeout=30,
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return JobDetails(**response.json())

    def logs(self, submission_id: str) -> str:
        return self.client.get_job_logs(submission_id)

    def stop(self, submission_id: str) -> bool:
        return self.client.stop_job(submission_id)

    def test_connection(self) -> tuple[bool, str]:
        try:
            version = self.client.get_version()
        except Exception as exc:  # the UI shows the message as is
            return False, str(exc)
        return True, f"Ray Job API {version} at {self.address}"
