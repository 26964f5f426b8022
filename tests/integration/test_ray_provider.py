"""The Ray provider against the stack's real Ray head (token auth on): the trigger's events, its log
stream, a user's kill, its deadline, an event loop it never blocks, and the token it needs.

The jobs here run a one-line Python entrypoint and no working dir: seconds each.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import socket
import threading
import time
import uuid

import httpx
import pytest
from ray_operators.hooks.ray_job import RayJobHook
from ray_operators.triggers.ray_job import TIMED_OUT, RayJobTrigger

LINES = 3000


@pytest.fixture(scope="module")
def hook(stack) -> RayJobHook:
    return RayJobHook()


def _submit(hook: RayJobHook, code: str) -> str:
    submission_id = f"provider-test-{uuid.uuid4().hex[:8]}"
    hook.submit(entrypoint=f"python -c {shlex.quote(code)}", submission_id=submission_id)
    return submission_id


async def _event(trigger: RayJobTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def _logged_to(caplog, trigger: RayJobTrigger) -> RayJobTrigger:
    """The trigger's log (structlog, which the triggerer routes into the task's log) on a standard
    logger that pytest captures."""
    trigger._log = logging.getLogger("trigger-under-test")
    caplog.set_level(logging.INFO, logger="trigger-under-test")
    return trigger


def _lines(caplog) -> list[str]:
    return [record.getMessage().removeprefix("[ray] ") for record in caplog.records
            if record.name == "trigger-under-test" and record.getMessage().startswith("[ray] ")]


def test_a_succeeded_job_fires_one_event_and_streams_each_log_line_once(hook, caplog):
    job = _submit(hook, f"for i in range({LINES}): print('line', i, flush=True)")
    event = asyncio.run(_event(_logged_to(caplog, RayJobTrigger(submission_id=job, poll_interval=0.5))))
    assert event["status"] == "SUCCEEDED" and event["submission_id"] == job
    numbered = [line for line in _lines(caplog) if line.startswith("line ")]
    assert numbered == [f"line {i}" for i in range(LINES)]  # all of them, in order, none twice
    assert event["log_tail"][-1] == f"line {LINES - 1}" and len(event["log_tail"]) == 30


def test_a_failed_job_reports_its_status_message_and_last_lines(hook):
    job = _submit(hook, "print('reading the batch', flush=True); raise SystemExit('the PDF is encrypted')")
    event = asyncio.run(_event(RayJobTrigger(submission_id=job, poll_interval=0.5)))
    assert event["status"] == "FAILED"
    assert "the PDF is encrypted" in "\n".join(event["log_tail"]) and "reading the batch" in event["log_tail"]


def test_a_users_kill_stops_the_job_and_the_trigger_reports_it_stopped(hook):
    job = _submit(hook, "import time; print('started', flush=True); time.sleep(120)")
    trigger = RayJobTrigger(submission_id=job, poll_interval=0.5)

    async def kill_once_running() -> dict:
        waiting = asyncio.create_task(_event(trigger))
        while (hook.find(job) or {}).get("status") != "RUNNING":
            await asyncio.sleep(0.2)
        await RayJobTrigger(submission_id=job).on_kill()  # the triggerer calls it on a fresh instance
        return await asyncio.wait_for(waiting, 60)

    assert asyncio.run(kill_once_running())["status"] == "STOPPED"


def test_a_trigger_cancelled_as_by_a_triggerer_restart_leaves_the_job_running(hook):
    job = _submit(hook, "import time; time.sleep(120)")

    async def cancel_after_a_poll() -> None:
        waiting = asyncio.create_task(_event(RayJobTrigger(submission_id=job, poll_interval=0.5)))
        await asyncio.sleep(3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    try:
        asyncio.run(cancel_after_a_poll())
        assert hook.find(job)["status"] in ("PENDING", "RUNNING")
    finally:
        hook.stop(job)


def test_past_its_deadline_the_trigger_stops_the_job_and_says_so(hook):
    job = _submit(hook, "import time; time.sleep(120)")
    event = asyncio.run(_event(RayJobTrigger(submission_id=job, poll_interval=0.5, deadline=time.time() + 4)))
    assert event["status"] == TIMED_OUT and "deadline" in event["message"]
    deadline = time.monotonic() + 30
    while hook.find(job)["status"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert hook.find(job)["status"] == "STOPPED"


def test_the_trigger_never_blocks_the_event_loop(hook, caplog, monkeypatch):
    """While the trigger polls and streams a job that writes fast: no blocking call (a sync HTTP
    request, a sync connect, a sleep) runs on the event loop's thread, a heartbeat beside the trigger
    keeps ticking, and asyncio's debug mode finds no step anywhere near the triggerer's own warning
    (0.2 s blocked). The step bound is loose on purpose: on a loaded 2-core machine a busy Ray job
    alone has stretched a 20 ms step to 160 ms; the blocking calls themselves are caught exactly."""
    job = _submit(hook, f"for i in range({LINES * 5}): print('x' * 80, i, flush=True)")
    caplog.set_level(logging.WARNING, logger="asyncio")
    blocking: list[str] = []
    loop_thread = threading.get_ident()

    def refused_on_the_loop(name: str, call):
        def guarded(*args, **kwargs):
            if threading.get_ident() == loop_thread:
                blocking.append(name)
            return call(*args, **kwargs)
        return guarded

    for owner, name in ((httpx.Client, "send"), (socket, "create_connection"), (time, "sleep")):
        monkeypatch.setattr(owner, name, refused_on_the_loop(name, getattr(owner, name)))

    async def watched() -> float:
        asyncio.get_running_loop().slow_callback_duration = 0.5
        gaps, stop = [], asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beating = asyncio.create_task(heartbeat())
        event = await _event(RayJobTrigger(submission_id=job, poll_interval=0.2))
        stop.set()
        await beating
        assert event["status"] == "SUCCEEDED"
        return max(gaps)

    worst_gap = asyncio.run(watched(), debug=True)
    assert not blocking, blocking
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, slow
    assert worst_gap < 1.0, worst_gap


def test_the_job_api_refuses_a_request_without_the_right_token_and_the_connection_test_says_why(hook, stack):
    address = hook.config.address
    assert httpx.get(f"{address}/api/jobs/", timeout=10).status_code == 401
    assert httpx.get(f"{address}/api/jobs/", headers=hook.config.headers, timeout=10).status_code == 200
    assert hook.test_connection()[0] is True
    wrong = RayJobHook()
    wrong.config = type(hook.config)(address=address, token="not-the-token", max_attempts=1)
    ok, message = wrong.test_connection()
    assert not ok and "403 Forbidden" in message  # a wrong token is refused as such; none at all is a 401
