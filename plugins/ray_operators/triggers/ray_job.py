"""Wait for a Ray job in the triggerer, without holding a worker slot.

The trigger polls the job's status (async HTTP) and streams its log into the task's log (the Job
API's websocket tail) until the job ends, then fires one event: the job's final status and
message, and the last lines of its log. Nothing in it blocks the triggerer's event loop.

A short job's end is seen within a moment: the polls start half a second apart and then wait a
tenth of the job's age, up to ``poll_interval`` (so its end is seen within a tenth of its length,
at most a poll interval late). Ray's tail lags the log by a second or two and closes some seconds after the
job's end (measured on Ray 2.60: about 3 s after the last line): once the status is final, what the
tail has not delivered is read at once from the job's whole log, in one request (a wait for the tail
cost every job half a second, and the tail never caught up within it).

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
# The shortest pause between two status polls, and the share of the job's age a pause may be.
_FIRST_POLL_SECONDS = 0.5
_POLL_SHARE_OF_AGE = 0.1
# Log lines written between two yields to the event loop.
_LINES_PER_TURN = 100


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
                status, message = await self._wait(api)
                if streaming is not None and not (streaming.done() and streaming.result()):
                    streaming.cancel()  # lagging, or broken off: the rest from the whole log
                    await self._rest_of_log(api, tail)
            finally:
                if streaming is not None and not streaming.done():
                    streaming.cancel()
        yield TriggerEvent({"submission_id": self.submission_id, "status": status, "message": message,
                            "log_tail": list(tail)})

    async def _wait(self, api: AsyncJobApi) -> tuple[str, str]:
        started = time.monotonic()
        while True:
            job = await api.find(self.submission_id)
            if job is None:
                return VANISHED, f"Ray job {self.submission_id} is not on the cluster any more"
            if job["status"] not in ACTIVE_STATES:
                return job["status"], job.get("message") or ""
            if self.deadline is not None and time.time() > self.deadline:
                await api.stop(self.submission_id)
                return TIMED_OUT, f"Ray job {self.submission_id} ran past its deadline and was stopped"
            await asyncio.sleep(self.pause(time.monotonic() - started))

    def pause(self, age: float) -> float:
        """Seconds until the next status poll of a job this old (as this trigger has watched it)."""
        return min(self.poll_interval, max(_FIRST_POLL_SECONDS, age * _POLL_SHARE_OF_AGE))

    async def _stream(self, api: AsyncJobApi, tail: deque[str]) -> bool:
        """The job's log into the task's log as the tail delivers it; whether it got to the log's end."""
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

    async def _rest_of_log(self, api: AsyncJobApi, tail: deque[str]) -> None:
        """The lines of the ended job's log the tail had not delivered, from the whole log; its last lines
        are the event's tail."""
        try:
            text = await api.logs(self.submission_id)
        except Exception as exc:  # as above: lines lost, not the outcome
            self.log.warning("The end of Ray job %s's log could not be read: %s", self.submission_id, exc)
            return
        lines = (text or "").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the log's final newline
        tail.clear()
        tail.extend(lines)  # the whole log's last lines, those of the task's log before this trigger too
        for number, line in enumerate(lines[self.lines_streamed:], 1):
            self.log.info("[ray] %s", line)
            if number % _LINES_PER_TURN == 0:
                await asyncio.sleep(0)  # as in _stream: other triggers' turn
        self.lines_streamed = max(self.lines_streamed, len(lines))

    async def on_kill(self) -> None:
        """A user acted on the deferred task: the job must not run on without it."""
        async with await self._api() as api:
            if await api.stop(self.submission_id):
                self.log.info("Stopped Ray job %s", self.submission_id)
