"""S3 event notifications through SQS, on moto's server (the SQS and S3 wire protocols, S3 notifying
the queue itself): one event per upload or delete in the inbox; S3's test event, other prefixes and a
message delivered twice start nothing; a message is deleted only once its event is stored, and one
whose event was not stored comes back; a message lost before the watcher saw it leaves its document
as work for the sweep.

The triggerer's ack-mode manager is played by ``drive``: it hands the filter each raw message, and
advances the producer with what became of it, as ``airflow.triggers.shared_stream`` does once the
trigger events are persisted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from include.control.inbox_events import S3EventQueueTrigger, inbox_changes

INBOX = "s3://documents/inbox/"


@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A bucket whose inbox/ notifies a queue, and an Airflow connection to both."""
    import boto3

    monkeypatch.setenv("AIRFLOW_CONN_MOTO", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"}}))
    options = {"endpoint_url": moto_server, "region_name": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}
    s3, sqs = boto3.client("s3", **options), boto3.client("sqs", **options)
    s3.create_bucket(Bucket="documents")
    queue_url = sqs.create_queue(QueueName="inbox-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket="documents", NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}}}]})
    drain(sqs, queue_url)  # whatever configuring sent (real S3 sends its test event then)
    yield s3, sqs, queue_url
    for listed in s3.list_objects_v2(Bucket="documents").get("Contents", []):
        s3.delete_object(Bucket="documents", Key=listed["Key"])
    sqs.delete_queue(QueueUrl=queue_url)


def drain(sqs, queue_url: str) -> list[dict]:
    messages = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages"):
        messages += batch
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)])
    return messages


def _trigger(queue_url: str, visibility_timeout: int = 30) -> S3EventQueueTrigger:
    return S3EventQueueTrigger(queue_url=queue_url, inbox_uri=INBOX, aws_conn_id="moto", wait_seconds=1,
                               visibility_timeout=visibility_timeout)


def drive(trigger: S3EventQueueTrigger, messages: int, stored=lambda event: True) -> list[dict]:
    """Run the trigger's shared stream over the next ``messages`` messages as the triggerer's ack mode
    does: a message whose derived event ``stored`` says was persisted, or that derived none, is acked."""
    from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

    producer = type(trigger).create_shared_stream_producer(trigger.serialize()[1])
    events: list[dict] = []

    async def scenario():
        stream = producer.open_stream()
        handles: list = []

        async def raw_messages():
            for _ in range(messages):
                body, handle = await anext(stream)
                handles.append(handle)
                yield body

        resolved = []
        filtered = trigger.filter_shared_stream(raw_messages())
        seen = 0
        async for event in filtered:
            # Every message before this one's derived nothing: acked as the filter moved past it.
            resolved += [AdvanceItem(h, AdvanceOutcome(acked=1, failed=0)) for h in handles[seen:-1]]
            ok = stored(event.payload)
            resolved.append(AdvanceItem(handles[-1], AdvanceOutcome(acked=int(ok), failed=int(not ok))))
            seen = len(handles)
            events.append(event.payload)
        resolved += [AdvanceItem(h, AdvanceOutcome(acked=1, failed=0)) for h in handles[seen:]]
        await producer.advance(resolved)
        await stream.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    return events


def test_each_upload_and_delete_in_the_inbox_is_one_event_and_its_message_is_then_deleted(aws):
    s3, sqs, queue_url = aws
    s3.put_object(Bucket="documents", Key="inbox/a report.pdf", Body=b"%PDF-1.7 a")
    s3.put_object(Bucket="documents", Key="inbox/b.pdf", Body=b"%PDF-1.7 b")
    s3.put_object(Bucket="documents", Key="elsewhere/c.pdf", Body=b"%PDF-1.7 c")  # not notified: the filter
    s3.delete_object(Bucket="documents", Key="inbox/b.pdf")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "documents"}))  # what S3 sends on set-up

    events = drive(_trigger(queue_url), messages=4)

    assert events == [{"queue": queue_url, "created": 1, "removed": 0}, {"queue": queue_url, "created": 1, "removed": 0},
                      {"queue": queue_url, "created": 0, "removed": 1}]
    assert drain(sqs, queue_url) == []  # all four deleted, the test event too


def test_a_message_delivered_twice_is_announced_once(aws):
    s3, sqs, queue_url = aws
    s3.put_object(Bucket="documents", Key="inbox/a.pdf", Body=b"%PDF-1.7 a")
    (message,) = drain(sqs, queue_url)
    for _ in range(2):  # SQS (and S3) deliver at least once
        sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])
    assert drive(_trigger(queue_url), messages=2) == [{"queue": queue_url, "created": 1, "removed": 0}]
    assert drain(sqs, queue_url) == []


def test_a_message_whose_event_was_not_stored_is_delivered_again(aws):
    s3, sqs, queue_url = aws
    s3.put_object(Bucket="documents", Key="inbox/a.pdf", Body=b"%PDF-1.7 a")
    assert drive(_trigger(queue_url, visibility_timeout=1), messages=1, stored=lambda event: False)
    # Not deleted: visible again once its visibility timeout passes, and announced by the next watcher.
    assert drive(_trigger(queue_url), messages=1) == [{"queue": queue_url, "created": 1, "removed": 0}]
    assert drain(sqs, queue_url) == []


def test_a_message_that_is_no_s3_event_is_left_for_the_dead_letter_queue(aws, caplog):
    _, sqs, queue_url = aws
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    trigger = _trigger(queue_url, visibility_timeout=1)

    # In ack mode the filter's reject counts the message as rejected, and a rejected message is not deleted.
    from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

    producer = type(trigger).create_shared_stream_producer(trigger.serialize()[1])

    async def scenario():
        stream = producer.open_stream()
        body, handle = await anext(stream)

        async def one():
            yield body

        assert [event async for event in trigger.filter_shared_stream(one())] == []
        await producer.advance([AdvanceItem(handle, AdvanceOutcome(acked=0, failed=0, rejected=1))])
        await stream.aclose()

    asyncio.run(scenario())
    assert "is no S3 event notification" in caplog.text
    time.sleep(1.5)  # its visibility timeout: then it is in the queue again, for its redrive policy
    assert [m["Body"] for m in drain(sqs, queue_url)] == ["hello"]


def test_a_lost_message_leaves_its_document_as_work_for_the_sweep(aws, pipeline_env, monkeypatch):
    from include.control import ingest
    from include.control.settings import reload_settings

    s3, sqs, queue_url = aws
    s3.put_object(Bucket="documents", Key="inbox/a.pdf", Body=b"%PDF-1.7 a")
    assert len(drain(sqs, queue_url)) == 1  # lost: nobody will announce it
    monkeypatch.setenv("PIPELINE_INBOX_URI", INBOX)
    reload_settings()
    listing = s3.list_objects_v2(Bucket="documents", Prefix="inbox/")["Contents"]
    # The sweep's sensor and planner read the listing and the ledger, not the queue.
    assert [info.uri for info in ingest.inbox_work(listing).work] == [f"{INBOX}a.pdf"]
    reload_settings()


@pytest.mark.parametrize("body, changes", [
    ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "documents"}, '
     '"object": {"key": "inbox/a+b%C3%A9.pdf", "eTag": "e1"}}}]}', [("created", "inbox/a bé.pdf", "e1")]),
    ('{"Type": "Notification", "Message": "{\\"Records\\": [{\\"eventName\\": \\"ObjectRemoved:Delete\\", '
     '\\"s3\\": {\\"bucket\\": {\\"name\\": \\"documents\\"}, \\"object\\": {\\"key\\": \\"inbox/a.pdf\\", '
     '\\"sequencer\\": \\"0A1\\"}}}]}"}', [("removed", "inbox/a.pdf", "0A1")]),  # through SNS
    ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "other"}, '
     '"object": {"key": "inbox/a.pdf"}}}]}', []),
    ('{"Event": "s3:TestEvent"}', []),
    ("not json", None),
    ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', None),
])
def test_notifications_are_read_as_s3_writes_them(body, changes):
    assert inbox_changes(body, "documents", "inbox/") == changes


def test_the_queue_watcher_round_trips_through_its_serialized_form():
    trigger = _trigger("https://sqs.us-east-1.amazonaws.com/123456789012/inbox-events")
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.shared_stream_key() == trigger.shared_stream_key()
