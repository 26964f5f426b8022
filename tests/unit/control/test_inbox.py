"""What the inbox holds, as the sensor and the planner see it: keys refused with the reason and left where
they are (control characters, a second spelling of one path, a key too long to quarantine on S3), keys a run
names outside its inbox, and an inbox emptied of its last documents."""

from __future__ import annotations

import pytest

from include.control import ingest
from include.control.inbox_keys import printable, refusal
from include.control.settings import ControlSettings
from include.storage import Storage, join_uri
from tests.helpers import DAG_ID

S3 = ControlSettings(inbox_uri="s3://documents/inbox/", quarantine_uri="s3://documents/quarantine/")


def test_control_characters_are_refused_and_printed_escaped():
    reason = refusal(S3, "s3://documents/inbox/q3\nINFO all good.pdf")
    assert reason == ("s3://documents/inbox/q3\\nINFO all good.pdf: the key holds a control character (\\n, "
                      "character 3): rename the object")
    assert "\n" not in reason
    assert printable("a\x1b[31mb\u2028c") == "a\\x1b[31mb\\u2028c"
    assert printable("Übersicht #1?.pdf") == "Übersicht #1?.pdf"  # nothing else is touched


@pytest.mark.parametrize("key", ["/a.pdf", "sub//a.pdf", "./a.pdf", "sub/../a.pdf", "sub/"])
def test_a_second_spelling_of_a_path_is_refused(key):
    assert "an empty, '.' or '..' segment" in refusal(S3, f"s3://documents/inbox/{key}")


def test_a_key_too_long_to_quarantine_on_s3_is_refused_with_the_length_that_fits():
    fits = "k" * (1024 - len("quarantine/") - len(".quarantine.json"))
    assert refusal(S3, f"s3://documents/inbox/{fits}") is None
    reason = refusal(S3, f"s3://documents/inbox/{fits}é")  # one character, two bytes, too many
    assert f"the key is {len(fits) + 2} bytes; its quarantine note's key would be 1026" in reason
    assert f"rename the object to at most {len(fits)} bytes" in reason


def test_a_run_refuses_those_keys_alone_and_leaves_them_in_the_inbox(pipeline_env, sample_pdfs):
    from include.control.batching import read_plan, run_folder

    storage = Storage(pipeline_env)
    good = join_uri(pipeline_env.inbox_uri, "good.pdf")
    storage.write_bytes(good, sample_pdfs["metformin_trial_protocol.pdf"].read_bytes())
    forged = join_uri(pipeline_env.inbox_uri, "a.pdf\nWARNING QUARANTINED everything")
    storage.write_bytes(forged, b"%PDF-1.7")
    long_key = join_uri(pipeline_env.inbox_uri, *["d" * 200] * 6, "x.pdf")
    storage.write_bytes(long_key, b"%PDF-1.7")

    ingest.plan_run(DAG_ID, "run-1")
    plan = read_plan(storage, run_folder(pipeline_env.artifacts_uri, DAG_ID, "run-1"))
    assert [doc.source_uri for batch in plan.batches for doc in batch_documents(storage, batch)] == [good]
    refused = {item.source_uri: item.error for item in plan.unreadable}
    assert set(refused) == {printable(forged), long_key}
    assert all("\n" not in line for line in refused.values())
    assert storage.exists(forged) and storage.exists(long_key)  # left where they are


def batch_documents(storage, batch):
    from include.contract import BatchSpec

    return BatchSpec.model_validate(storage.read_json(batch.batch_uri)).documents


def test_the_sensor_sees_no_work_in_refused_keys(pipeline_env, monkeypatch):
    s3 = pipeline_env.model_copy(update={"inbox_uri": S3.inbox_uri, "quarantine_uri": S3.quarantine_uri})
    monkeypatch.setattr(ingest, "get_control_settings", lambda: s3)

    def entry(key: str) -> dict:
        return {"Key": f"inbox/{key}", "Size": 8, "ETag": '"e1"'}

    assert not ingest.inbox_has_work([entry("a\nb.pdf"), entry("sub//c.pdf")])
    assert ingest.inbox_has_work([entry("a\nb.pdf"), entry("fine.pdf")])


def test_a_run_naming_a_key_outside_its_inbox_fails_at_once_naming_it(pipeline_env):
    outside = join_uri(pipeline_env.artifacts_uri, "secret.pdf")
    with pytest.raises(ValueError, match="secret.pdf: not under the inbox"):
        ingest.plan_run(DAG_ID, "run-1", [outside])


def test_an_emptied_inbox_is_work_for_the_sensor_its_documents_vectors_must_go(pipeline_env, monkeypatch):
    from include.contract import DocumentRef
    from include.control.ledger import Final, Ledger, Status

    s3 = pipeline_env.model_copy(update={"inbox_uri": S3.inbox_uri, "quarantine_uri": S3.quarantine_uri})
    monkeypatch.setattr(ingest, "get_control_settings", lambda: s3)
    assert not ingest.inbox_has_work([])  # nothing in the inbox, nothing in the ledger
    last = DocumentRef(doc_id="last-1", source_uri=f"{S3.inbox_uri}last.pdf", size_bytes=8, object_version="e1")
    ledger = Ledger.open(s3)
    ledger.claim(DAG_ID, "run-1", [last], "fp", is_active=lambda *_: True)
    ledger.finish("run-1", [Final(last, Status.INGESTED, stage_reached="load")])
    assert ingest.inbox_has_work([])  # the last document was deleted: the run that prunes it must start
