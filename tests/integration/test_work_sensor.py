"""The DAGs' work sensor against the stack's S3 server: it asks whether there is work on an empty
listing too (an emptied inbox is work: its vectors must go), and waits for a key a run names."""

from __future__ import annotations

import pytest

from include.control.sensors import S3WorkSensor
from tests.integration.conftest import isolated_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(stack):
    yield from isolated_env(stack, "sensor")


def _sensor(bucket_keys, asked: list) -> S3WorkSensor:
    def has_work(files, params):
        asked.append(sorted(entry["Key"] for entry in files))
        return bool(params.get("answer"))

    return S3WorkSensor(task_id="wait", bucket_name="documents", bucket_keys=bucket_keys, has_work=has_work)


def test_an_empty_prefix_is_still_asked_about_and_a_named_key_is_waited_for(env):
    from include.control import ingest
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    asked: list = []
    everything = _sensor(ingest.sensor_keys(None), asked)
    assert everything.poke({"params": {"answer": True}}) is True
    assert asked == [[]]  # the S3KeySensor would have returned False before asking

    named = _sensor(ingest.sensor_keys(["late [draft]*.pdf"]), asked)
    assert named.poke({"params": {"answer": True}}) is False and asked == [[]]  # not there yet: not asked
    uri = join_uri(get_control_settings().inbox_uri, "late [draft]*.pdf")
    Storage(get_control_settings()).write_bytes(uri, b"%PDF-1.7")
    assert named.poke({"params": {"answer": True}}) is True
    assert asked[-1] == ["sensor/inbox/late [draft]*.pdf"]
    assert everything.poke({"params": {}}) is False and asked[-1] == ["sensor/inbox/late [draft]*.pdf"]
