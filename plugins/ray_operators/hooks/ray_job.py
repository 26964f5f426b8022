"""Hook for a Ray cluster's Job API (the dashboard's REST API, port 8265 by default).

Connection (type ``ray``): host and port of the dashboard, ``schema`` http or https, and the
cluster's token in ``password`` when it runs with ``RAY_AUTH_MODE=token`` (sent as
``Authorization: Bearer``; Airflow masks it like any connection password). Extra, all optional::

    {"verify": true,          # TLS certificate check
     "namespace": "airflow",  # first part of every submission id: give each deployment its own
     "timeout": 30,           # seconds per HTTP request
     "max_attempts": 5}       # tries of a request that met a transient error (connection, 502-504)

As an environment variable::

    AIRFLOW_CONN_RAY_DEFAULT='{"conn_type": "ray", "host": "127.0.0.1", "port": 8265, "password": "<token>"}'

The status, stop and log calls are plain HTTP (``httpx``, sync for the operator and async for the
trigger, one retry policy for both); only submission goes through Ray's SDK, which packages and
uploads a local ``working_dir``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from airflow.sdk import BaseHook
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from ray.job_submission import JobSubmissionClient

ACTIVE_STATES = frozenset({"PENDING", "RUNNING"})
# Gateways and a dashboard restarting answer these for a moment; anything else is the answer.
_TRANSIENT_STATUS = frozenset({502, 503, 504})


@dataclass(frozen=True)
class JobApiConfig:
    """What a ``ray`` connection says about reaching the Job API."""

    address: str
    token: str | None = field(default=None, repr=False)
    verify: bool = True
    namespace: str = "airflow"
    timeout: float = 30.0
    max_attempts: int = 5

    @classmethod
    def from_connection(cls, conn: Connection) -> JobApiConfig:
        extra = conn.extra_dejson
        host = conn.host or "127.0.0.1"
        address = host.rstrip("/") if "://" in host else f"{conn.schema or 'http'}://{host}:{conn.port or 8265}"
        return cls(address=address, token=conn.password or None, verify=bool(extra.get("verify", True)),
                   namespace=str(extra.get("namespace", "airflow")), timeout=float(extra.get("timeout", 30)),
                   max_attempts=int(extra.get("max_attempts", 5)))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client_options(self) -> dict[str, Any]:
        return {"base_url": self.address, "headers": self.headers, "timeout": self.timeout}

    def tls(self) -> ssl.SSLContext | bool:
        """What ``httpx`` and the websocket get as ``verify``/``ssl``: False over plain HTTP (nothing
        to verify), else a context, checking the certificate unless ``verify`` is off. Loading the CA
        certificates takes about a tenth of a second: the trigger builds it off the event loop."""
        if urlsplit(self.address).scheme != "https":
            return False
        return httpx.create_ssl_context(verify=self.verify)

    def retry_policy(self) -> dict[str, Any]:
        """Tenacity's arguments, for ``Retrying`` and ``AsyncRetrying`` alike."""
        return {"retry": retry_if_exception(_is_transient), "stop": stop_after_attempt(self.max_attempts),
                "wait": wait_exponential(multiplier=0.5, max=10), "reraise": True}

    def dashboard_url(self, submission_id: str) -> str:
        """The job's page on the Ray dashboard."""
        return f"{self.address}/#/jobs/{quote(submission_id, safe='')}"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in _TRANSIENT_STATUS


def _job_path(submission_id: str) -> str:
    return f"/api/jobs/{quote(submission_id, safe='')}"


def _checked(response: httpx.Response) -> httpx.Response | None:
    """The response, or None for a 404 (the cluster does not know the job); an error raised."""
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response


class RayJobHook(BaseHook):
    """Talks to a Ray cluster's Job API: submit, look up, stop and tail jobs."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    @cached_property
    def config(self) -> JobApiConfig:
        return JobApiConfig.from_connection(self.get_connection(self.ray_conn_id))

    async def aconfig(self) -> JobApiConfig:
        """The connection read without blocking the triggerer's event loop."""
        return JobApiConfig.from_connection(await self.aget_connection(self.ray_conn_id))

    @property
    def address(self) -> str:
        return self.config.address

    # --- sync: the operator ----------------------------------------------------

    @cached_property
    def _http(self) -> httpx.Client:
        return httpx.Client(**self.config.client_options(), verify=self.config.tls())

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        for attempt in Retrying(**self.config.retry_policy()):
            with attempt:
                response = self._http.request(method, path, **kwargs)
                if response.status_code in _TRANSIENT_STATUS:
                    response.raise_for_status()
        return _checked(response)

    @cached_property
    def client(self) -> JobSubmissionClient:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.config.headers, verify=self.config.verify)

    def submit(
        self,
        *,
        entrypoint: str,
        submission_id: str,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float = 0,
        entrypoint_resources: dict[str, float] | None = None,
    ) -> str:
        # Not retried here: a retry could not tell a lost answer from a refusal. The operator
        # looks the id up instead (a job with it is the one submitted).
        return self.client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata=metadata,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_resources=entrypoint_resources,
        )

    def find(self, submission_id: str) -> dict[str, Any] | None:
        """The job's details (``status``, ``message``...), or None if the cluster never saw it."""
        response = self._request("GET", _job_path(submission_id))
        return None if response is None else response.json()

    def stop(self, submission_id: str) -> bool:
        """Ask the cluster to stop the job: False if it had already ended or does not exist."""
        response = self._request("POST", f"{_job_path(submission_id)}/stop")
        return bool(response is not None and response.json().get("stopped"))

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: the Job API answers, and accepts the token."""
        try:
            version = self._request("GET", "/api/version").json()
            self._request("GET", "/api/jobs/")  # /api/version answers without a token; this does not
        except Exception as exc:  # the UI shows the message as is
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Ray {version.get('ray_version', '?')} Job API at {self.address}"


class AsyncJobApi:
    """The same calls for the triggerer's event loop: nothing here blocks."""

    def __init__(self, config: JobApiConfig) -> None:
        self.config = config

    async def __aenter__(self) -> AsyncJobApi:
        self._tls = await asyncio.to_thread(self.config.tls)
        self._http = httpx.AsyncClient(**self.config.client_options(), verify=self._tls)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str) -> httpx.Response | None:
        async for attempt in AsyncRetrying(**self.config.retry_policy()):
            with attempt:
                response = await self._http.request(method, path)
                if response.status_code in _TRANSIENT_STATUS:
                    response.raise_for_status()
        return _checked(response)

    async def find(self, submission_id: str) -> dict[str, Any] | None:
        response = await self._request("GET", _job_path(submission_id))
        return None if response is None else response.json()

    async def stop(self, submission_id: str) -> bool:
        response = await self._request("POST", f"{_job_path(submission_id)}/stop")
        return bool(response is not None and response.json().get("stopped"))

    async def logs(self, submission_id: str) -> str | None:
        """The job's whole log so far (one request): None for a job the cluster does not know."""
        response = await self._request("GET", f"{_job_path(submission_id)}/logs")
        return None if response is None else response.json().get("logs", "")

    async def tail_logs(self, submission_id: str) -> AsyncIterator[str]:
        """The job's log, line by line, from its start until the job ends (the Job API's websocket
        tail: each line is sent once, however long the job runs)."""
        from websockets.asyncio.client import connect

        scheme, netloc, path, _, _ = urlsplit(self.config.address)
        url = urlunsplit(("wss" if scheme == "https" else "ws", netloc, f"{path}{_job_path(submission_id)}/logs/tail",
                          "", ""))
        pending = ""
        # No permessage-deflate: Ray's dashboard (aiohttp) accepts it, then closes the tail without
        # sending a line (measured on Ray 2.60).
        async with connect(url, additional_headers=self.config.headers, ssl=self._tls or None,
                           open_timeout=self.config.timeout, max_size=None, compression=None) as socket:
            async for message in socket:
                text = pending + (message if isinstance(message, str) else message.decode(errors="replace"))
                *lines, pending = text.split("\n")
                for line in lines:
                    yield line
        if pending:
            yield pending
