"""A drop into the inbox starts a ``document_ingest`` run within seconds: the inbox watched from
Airflow's triggerer, as an asset watcher, by listing it (``InboxWorkTrigger``, the default: no queue
server needed) or, on AWS, through S3's event notifications to SQS (``S3EventQueueTrigger``).

``InboxWorkTrigger`` lists the inbox every ``poll_seconds``. When the listing has changed and then
stayed the same for ``settle_seconds`` (a burst of uploads is over; at most ``settle_max_seconds``
after it first changed), it asks the ledger what of the inbox is work, exactly as the run's sensor
will, and fires once if that holds anything it has not announced before: an event on the inbox
asset, which starts a run (Airflow folds the events that arrive while a run is active into one next
run). Nothing is decided here: the run plans from the listing and the ledger, so a duplicate or a
late event costs one run that finds nothing and skips, and an event the watcher never fires (it
was down) is caught by the sweep (``PIPELINE_INGEST_SCHEDULE``).

An unchanged listing costs one LIST request per poll and no ledger query. The S3 calls run on boto3
in a worker thread (the Amazon provider's async hooks need aiobotocore, which pins another botocore
than this project's boto3), so the triggerer's event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer, reject_shared_stream_event

from include.storage import split_s3_uri

log = logging.getLogger(__name__)
# Changes a queue watcher remembers, to announce a change S3 or SQS delivered twice only once.
_REMEMBERED_CHANGES = 100_000


def work_items(found: Any) -> set[str]:
    """What a ``Pending`` holds, one string per document version to process or source gone."""
    return {f"{info.uri}@{info.version}" for info in found.work} | {f"{uri}@deleted" for uri in found.deleted}


class InboxWorkTrigger(BaseEventTrigger):
    """Fires each time the inbox holds work no earlier event of this trigger announced.

    :param inbox_uri: ``s3://bucket/prefix/`` of the inbox.
    :param aws_conn_id: the connection to S3.
    :param poll_seconds: seconds between listings.
    :param settle_seconds: how long a changed listing must stay the same before the ledger is asked.
    :param settle_max_seconds: the longest a changing listing delays that question.
    """

    def __init__(self, *, inbox_uri: str, aws_conn_id: str | None = "aws_default", poll_seconds: float = 5.0,
                 settle_seconds: float = 3.0, settle_max_seconds: float = 60.0) -> None:
        super().__init__()
        self.inbox_uri = inbox_uri
        self.aws_conn_id = aws_conn_id
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self.settle_max_seconds = settle_max_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "inbox_uri": self.inbox_uri, "aws_conn_id": self.aws_conn_id, "poll_seconds": self.poll_seconds,
            "settle_seconds": self.settle_seconds, "settle_max_seconds": self.settle_max_seconds,
        }

    def _listing(self) -> list[dict[str, Any]]:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from include.control.sensors import listing_entries

        bucket, prefix = split_s3_uri(self.inbox_uri)
        return listing_entries(S3Hook(aws_conn_id=self.aws_conn_id), bucket, prefix)

    @staticmethod
    def _work(listing: list[dict[str, Any]]) -> set[str]:
        from include.control.ingest import inbox_work

        return work_items(inbox_work(listing))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        announced: set[str] = set()
        seen = asked = None  # digests of the last listing, and of the last one the ledger was asked about
        changed_at = 0.0
        while True:
            try:
                listing = await asyncio.to_thread(self._listing)
            except Exception as error:  # an S3 outage: the watcher waits it out, it does not end
                self.log.warning("Listing %s failed (%s): trying again in %ss", self.inbox_uri, error,
                                 self.poll_seconds)
                await asyncio.sleep(self.poll_seconds)
                continue
            digest = hashlib.sha256(repr(sorted((e["Key"], e["ETag"], e["Size"]) for e in listing)).encode()).digest()
            now = time.monotonic()
            if digest != seen:
                if seen is None or asked == seen:
                    changed_at = now  # a first change since the ledger was last asked
                seen = digest
                quiet_since = now
            if digest != asked and (now - quiet_since >= self.settle_seconds
                                    or now - changed_at >= self.settle_max_seconds):
                try:
                    work = await asyncio.to_thread(self._work, listing)
                except Exception as error:  # the ledger unreachable: ask again at the next poll
                    self.log.warning("Asking the ledger about %s failed (%s)", self.inbox_uri, error)
                else:
                    asked = digest
                    fresh = work - announced
                    # What is no longer work (ingested, deleted) is forgotten: a new version of it is news.
                    announced = work
                    if fresh:
                        self.log.info("%d new piece(s) of work in %s (%d in all): starting a run", len(fresh),
                                      self.inbox_uri, len(work))
                        yield TriggerEvent({"inbox": self.inbox_uri, "new": len(fresh), "work": len(work)})
            await asyncio.sleep(self.poll_seconds)


# --- S3 event notifications through SQS (on AWS) -----------------------------------------------


def inbox_changes(body: str, bucket: str, prefix: str) -> list[tuple[str, str, str]] | None:
    """The inbox's changes an SQS message announces, as ``(kind, key, version)``; ``[]`` for a message
    with nothing for this inbox (S3's ``s3:TestEvent``, another prefix), ``None`` for one that is not an S3
    event notification at all. Plain S3 notifications and S3 -> SNS -> SQS envelopes are read."""
    from urllib.parse import unquote_plus

    try:
        message = json.loads(body)
        if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
            message = json.loads(message["Message"])
    except (ValueError, AttributeError):
        return None
    if not isinstance(message, dict):
        return None
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        return None
    changes = []
    for record in records:
        try:
            name, s3 = record["eventName"], record["s3"]
            key = unquote_plus(s3["object"]["key"])  # S3 URL-encodes keys in notifications
            version = s3["object"].get("eTag") or s3["object"].get("sequencer") or ""
            record_bucket = s3["bucket"]["name"]
        except (KeyError, TypeError):
            return None
        kind = "created" if name.startswith("ObjectCreated:") else "removed" if name.startswith("ObjectRemoved:") else ""
        if kind and record_bucket == bucket and key.startswith(prefix) and not key.endswith("/"):
            changes.append((kind, key, version))
    return changes


class SqsMessages(SharedStreamProducer):
    """The queue's messages, received without deleting them; a message is deleted only once the
    triggerer has stored every event derived from it (or it was nothing to derive one from), so an
    event is never lost between the queue and Airflow. A message whose event was not stored comes back
    after its visibility timeout; one the filter rejected stays for the queue's redrive policy (a
    dead-letter queue) to take."""

    def __init__(self, *, queue_url: str, aws_conn_id: str | None, wait_seconds: int, visibility_timeout: int) -> None:
        self.queue_url = queue_url
        self.aws_conn_id = aws_conn_id
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self._client: Any = None

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        self._client = await asyncio.to_thread(lambda: SqsHook(aws_conn_id=self.aws_conn_id).get_conn())
        while True:
            try:
                response = await asyncio.to_thread(
                    self._client.receive_message, QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                    WaitTimeSeconds=self.wait_seconds, VisibilityTimeout=self.visibility_timeout)
            except Exception as error:  # the queue unreachable: its messages wait there
                log.warning("Receiving from %s failed (%s): trying again", self.queue_url, error)
                await asyncio.sleep(self.wait_seconds or 1)
                continue
            for message in response.get("Messages", []):
                yield message["Body"], message["ReceiptHandle"]

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        done = [item.broker_payload for item in batch if item.outcome.is_clean]
        for start in range(0, len(done), 10):  # SQS deletes at most 10 messages per call
            entries = [{"Id": str(n), "ReceiptHandle": handle} for n, handle in enumerate(done[start : start + 10])]
            response = await asyncio.to_thread(self._client.delete_message_batch, QueueUrl=self.queue_url,
                                               Entries=entries)
            for failure in response.get("Failed", []):  # redelivered later: a duplicate, which costs nothing
                log.warning("Deleting a message from %s failed: %s", self.queue_url, failure.get("Message"))


class S3EventQueueTrigger(BaseEventTrigger):
    """Fires for each message of an SQS queue that announces a change in the inbox (S3 event
    notifications, ``s3:ObjectCreated:*`` and ``s3:ObjectRemoved:*``), at least once.

    Runs in the triggerer's ack mode (Airflow 3.3): the queue's messages are deleted only after the
    asset events they gave were stored (``SqsMessages``). S3's test event and messages for other prefixes
    start nothing; a change announced twice (the same key and version: S3 and SQS both deliver at least
    once) is announced once per watcher lifetime, and a duplicate that gets through costs one run that
    finds no work. The event says how many changes, never the keys (a key can carry personal data, and
    Airflow keeps events): the run plans from the listing and the ledger.

    :param queue_url: the SQS queue S3 notifies.
    :param inbox_uri: ``s3://bucket/prefix/`` of the inbox.
    :param aws_conn_id: the connection to SQS.
    :param wait_seconds: long-poll wait of each receive.
    :param visibility_timeout: seconds a received message stays hidden before it is delivered again.
    """

    def __init__(self, *, queue_url: str, inbox_uri: str, aws_conn_id: str | None = "aws_default",
                 wait_seconds: int = 10, visibility_timeout: int = 300) -> None:
        super().__init__()
        self.queue_url = queue_url
        self.inbox_uri = inbox_uri
        self.aws_conn_id = aws_conn_id
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "queue_url": self.queue_url, "inbox_uri": self.inbox_uri, "aws_conn_id": self.aws_conn_id,
            "wait_seconds": self.wait_seconds, "visibility_timeout": self.visibility_timeout,
        }

    def shared_stream_key(self) -> Hashable:
        return ("sqs", self.queue_url, self.aws_conn_id or "")

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SqsMessages:
        return SqsMessages(queue_url=kwargs["queue_url"], aws_conn_id=kwargs.get("aws_conn_id"),
                           wait_seconds=kwargs.get("wait_seconds", 10),
                           visibility_timeout=kwargs.get("visibility_timeout", 300))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        bucket, prefix = split_s3_uri(self.inbox_uri)
        announced: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        async for body in shared_stream:
            changes = inbox_changes(body, bucket, prefix)
            if changes is None:
                log.error("A message of %s is no S3 event notification: left for the queue's dead-letter queue "
                          "(%.200s)", self.queue_url, body)
                reject_shared_stream_event()
                continue
            fresh = [change for change in changes if change not in announced]
            for change in fresh:
                announced[change] = None
                if len(announced) > _REMEMBERED_CHANGES:
                    announced.popitem(last=False)
            if fresh:
                yield TriggerEvent({"queue": self.queue_url,
                                    "created": sum(kind == "created" for kind, _, _ in fresh),
                                    "removed": sum(kind == "removed" for kind, _, _ in fresh)})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The triggerer runs a trigger with a shared_stream_key through filter_shared_stream, never here.
        raise NotImplementedError("S3EventQueueTrigger runs as a shared stream in the triggerer's ack mode")
        yield  # pragma: no cover
