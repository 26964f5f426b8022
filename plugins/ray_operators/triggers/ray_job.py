"""Wait for a Ray job in the triggerer, without holding a worker slot.

The trigger polls the job's status (async HTTP) and streams its log into the task's log (the Job
API's websocket tail) until the job ends, then fires one event: the job's final status and
message, and the last lines of its log. Nothing in it blocks the triggerer's event loop. The tail
closes when the job ends, so the trigger asks for the status then rather than at its next poll: a
short job's task resumes within a moment of its end, however long ``poll_interval`` is.

It stops the job only when a user acts on the deferred task (``on_kill``: mark failed or success,
clear); a triggerer restarting or handing the trigger to another triggerer leaves the job running,
and the trigger, started again from its kwargs, streams the log again from its start. Past
``deadline`` (a Unix time) the trigger stops the job itself and reports ``TIMED_OUT``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ray_operators.hooks.ray_job import ACTIVE_STATES, AsyncJobApi, RayJobHook

TIMED_OUT = "TIMED_OUT"
VANISHED = "VANISHED"
# How long the log tail may take to drain once the job has ended before the event fires anyway.
_LOG_DRAIN_SECONDS = 10.0
# Log lines written between two yields to the event loop.
_LINES_PER_TURN = 100
# Once the log's tail has closed, the job's status turns final within moments: asked this often, for
# at most this long (a tail that closed on a running job falls back to the poll interval).
_ENDING_POLL_SECONDS = 0.25
_ENDING_POLL_LIMIT_SECONDS = 10.0


class RayJobTrigger(BaseTrigger):
    """Fires when the Ray job ``submission_id`` ends.

    :param submission_id: the job's submission id.
    :param ray_conn_id: connection to the cluster's Job API.
    :param poll_interval: seconds between status requests.
    :param stream_logs: stream the job's log into the task's log.
    :param deadline: Unix time after which the job is stopped and reported ``TIMED_OUT``.
    :param tail_lines: lines of the log's end sent with the event (for a failure's message).
    :param skip_lines: lines of the log already in the task's log (streamed by the worker before it
        deferred): not written again.
    """

    def __init__(self, *, submission_id: str, ray_conn_id: str = RayJobHook.default_conn_name,
                 poll_interval: float = 5.0, stream_logs: bool = True, deadline: float | None = None,
                 tail_lines: int = 30, skip_lines: int = 0) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.stream_logs = stream_logs
        self.deadline = deadline
        self.tail_lines = tail_lines
        self.skip_lines = skip_lines
        self.lines_streamed = skip_lines  # how far the task's log has the job's log, as this trigger runs

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "submission_id": self.submission_id, "ray_conn_id": self.ray_conn_id,
            "poll_interval": self.poll_interval, "stream_logs": self.stream_logs, "deadline": self.deadline,
            "tail_lines": self.tail_lines, "skip_lines": self.skip_lines,
        })

    async def _api(self) -> AsyncJobApi:
        return AsyncJobApi(await RayJobHook(ray_conn_id=self.ray_conn_id).aconfig())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        tail: deque[str] = deque(maxlen=self.tail_lines)
        async with await self._api() as api:
            streaming = asyncio.create_task(self._stream(api, tail)) if self.stream_logs else None
            try:
                status, message = await self._wait(api, streaming)
                if streaming is not None:
                    # The tail closes once the job's log is complete: wait for it, within bounds.
                    await asyncio.wait({streaming}, timeout=_LOG_DRAIN_SECONDS)
            finally:
                if streaming is not None and not streaming.done():
                    streaming.cancel()
        yield TriggerEvent({"submission_id": self.submission_id, "status": status, "message": message,
                            "log_tail": list(tail)})

    async def _wait(self, api: AsyncJobApi, streaming: asyncio.Task[bool] | None) -> tuple[str, str]:
        fast_polls = int(_ENDING_POLL_LIMIT_SECONDS / _ENDING_POLL_SECONDS)
        while True:
            job = await api.find(self.submission_id)
            if job is None:
                return VANISHED, f"Ray job {self.submission_id} is not on the cluster any more"
            if job["status"] not in ACTIVE_STATES:
                return job["status"], job.get("message") or ""
            if self.deadline is not None and time.time() > self.deadline:
                await api.stop(self.submission_id)
                return TIMED_OUT, f"Ray job {self.submission_id} ran past its deadline and was stopped"
            if streaming is None:
                await asyncio.sleep(self.poll_interval)
            elif not streaming.done():
                await asyncio.wait({streaming}, timeout=self.poll_interval)  # or until the tail closes
            elif streaming.result() and fast_polls > 0:
                fast_polls -= 1  # the tail closed at the log's end: the job is ending
                await asyncio.sleep(_ENDING_POLL_SECONDS)
            else:
                await asyncio.sleep(self.poll_interval)  # the stream broke off: polling goes on

    async def _stream(self, api: AsyncJobApi, tail: deque[str]) -> bool:
        """The job's log into the task's log; whether it ran to the log's end (the job's end)."""
        seen = 0
        try:
            async for line in api.tail_logs(self.submission_id):
                tail.append(line)
                seen += 1
                if seen <= self.skip_lines:
                    continue
                self.log.info("[ray] %s", line)
                self.lines_streamed = seen
                if seen % _LINES_PER_TURN == 0:
                    # One message of the tail can hold thousands of lines: logging them all in one
                    # go would hold up every other trigger of the triggerer.
                    await asyncio.sleep(0)
        except Exception as exc:  # the status decides the task: a lost log stream only costs lines
            self.log.warning("The log stream of Ray job %s broke off: %s", self.submission_id, exc)
            return False
        return True

    async def on_kill(self) -> None:
        """A user acted on the deferred task: the job must not run on without it."""
        async with await self._api() as api:
            if await api.stop(self.submission_id):
                self.log.info("Stopped Ray job %s", self.submission_id)
