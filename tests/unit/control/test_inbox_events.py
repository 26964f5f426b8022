"""The inbox watcher: a burst of uploads is one event, an unchanged or already announced inbox none,
an S3 outage is waited out, and a restarted watcher announces what is still work (at least once).

The listing is scripted (the S3 call is the one thing replaced); what is work comes from the real
ledger, as it does in the triggerer. The watcher under Airflow's real triggerer starting a run is
``tests/integration/test_deferral.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from include.control.inbox_events import InboxWorkTrigger

INBOX = "s3://documents/inbox/"


@pytest.fixture
def s3_inbox(pipeline_env, monkeypatch):
    from include.control.settings import reload_settings

    monkeypatch.setenv("PIPELINE_INBOX_URI", INBOX)
    reload_settings()
    yield
    reload_settings()


def _entry(key: str, etag: str = "e1", size: int = 1000) -> dict:
    return {"Key": f"inbox/{key}", "ETag": etag, "Size": size}


class ScriptedInbox:
    """The listings the watcher gets, one per poll; the last one repeats."""

    def __init__(self, *listings):
        self.listings = list(listings)
        self.polls = 0

    def __call__(self):
        self.polls += 1
        listing = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
        if isinstance(listing, Exception):
            raise listing
        return listing

    def then(self, *listings):
        self.listings = list(listings)


def _watcher(monkeypatch, inbox: ScriptedInbox) -> InboxWorkTrigger:
    trigger = InboxWorkTrigger(inbox_uri=INBOX, poll_seconds=0.01, settle_seconds=0.05, settle_max_seconds=5)
    monkeypatch.setattr(trigger, "_listing", inbox)
    return trigger


class Events:
    """The trigger run as the triggerer runs it, in a task of its own, its events queued as they fire
    (a timeout on the generator itself would cancel it)."""

    def __init__(self, trigger: InboxWorkTrigger) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(trigger))

    async def _collect(self, trigger: InboxWorkTrigger) -> None:
        async for event in trigger.run():
            await self._queue.put(event.payload)

    async def next(self, within: float) -> dict:
        return await asyncio.wait_for(self._queue.get(), within)

    async def close(self) -> None:
        self._task.cancel()


def test_a_burst_of_uploads_is_one_event_and_an_unchanged_inbox_none(s3_inbox, monkeypatch):
    a, b, c = _entry("a.pdf"), _entry("b.pdf"), _entry("c.pdf")
    inbox = ScriptedInbox([a], [a, b], [a, b, c])

    async def scenario():
        events = Events(_watcher(monkeypatch, inbox))
        first = await events.next(5)
        with pytest.raises(TimeoutError):  # the same listing, polled on: nothing more to say
            await events.next(0.5)
        inbox.then([a, b, c, _entry("d.pdf")])
        second = await events.next(5)
        inbox.then([a, b, c, _entry("d.pdf", etag="e2", size=2000)])  # d.pdf replaced before any run took it
        third = await events.next(5)
        await events.close()
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first == {"inbox": INBOX, "new": 3, "work": 3}
    assert second == {"inbox": INBOX, "new": 1, "work": 4}
    assert third == {"inbox": INBOX, "new": 1, "work": 4}
    assert inbox.polls > 10


def test_a_steady_trickle_still_starts_runs(s3_inbox, monkeypatch):
    trickle = [[_entry(f"{n}.pdf") for n in range(count)] for count in range(1, 400)]
    trigger = InboxWorkTrigger(inbox_uri=INBOX, poll_seconds=0.01, settle_seconds=10, settle_max_seconds=0.2)
    monkeypatch.setattr(trigger, "_listing", ScriptedInbox(*trickle))

    async def scenario():
        events = Events(trigger)
        payload = await events.next(5)  # long before the listing settles
        await events.close()
        return payload

    assert 0 < asyncio.run(scenario())["new"] < 399


def test_an_s3_outage_is_waited_out_and_a_restarted_watcher_announces_the_work_again(s3_inbox, monkeypatch):
    a = _entry("a.pdf")
    inbox = ScriptedInbox(ConnectionError("S3 down"), ConnectionError("S3 down"), [a])

    async def first_life():
        events = Events(_watcher(monkeypatch, inbox))
        payload = await events.next(5)
        await events.close()
        return payload

    assert asyncio.run(first_life())["new"] == 1
    # A triggerer restart forgets what was announced: a.pdf is still work (no run has taken it), so it is
    # announced again; the run it starts plans from the ledger, and a duplicate run finds nothing and skips.
    assert asyncio.run(first_life())["new"] == 1


def test_files_that_are_not_work_start_nothing(s3_inbox, monkeypatch):
    inbox = ScriptedInbox([_entry("bad\nkey.pdf"), _entry("notes/")])

    async def scenario():
        events = Events(_watcher(monkeypatch, inbox))
        with pytest.raises(TimeoutError):
            await events.next(0.5)
        await events.close()

    asyncio.run(scenario())


def test_the_watcher_round_trips_through_its_serialized_form():
    trigger = InboxWorkTrigger(inbox_uri=INBOX, aws_conn_id="s3", poll_seconds=2, settle_seconds=1,
                               settle_max_seconds=30)
    classpath, kwargs = trigger.serialize()
    assert classpath == "include.control.inbox_events.InboxWorkTrigger"
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
