"""Quarantine on the stack's S3 server, with a new upload racing it: the copy and the delete are
conditional on the version planned (``CopySourceIfMatch``, ``If-Match``), so the new file is never lost."""

from __future__ import annotations

import pytest

from tests.integration.conftest import isolated_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(stack):
    yield from isolated_env(stack, "quarantine-race")


def _bad_file(name: str):
    from include.control.settings import get_control_settings
    from include.documents import describe
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    storage = Storage(settings)
    uri = join_uri(settings.inbox_uri, name)
    storage.write_bytes(uri, b"not a pdf")
    return settings, storage, uri, describe(storage, uri)


def test_an_upload_between_the_copy_and_the_delete_stays_in_the_inbox(env, monkeypatch):
    from include.control.quarantine import NOTE_SUFFIX, quarantine
    from include.storage import S3Backend

    settings, storage, uri, document = _bad_file("between.pdf")
    real_copy = S3Backend.copy

    def copy_then_upload(self, source_uri, target_uri, if_version=None):
        real_copy(self, source_uri, target_uri, if_version)
        storage.write_bytes(uri, b"%PDF-1.7 the fixed file")

    monkeypatch.setattr(S3Backend, "copy", copy_then_upload)
    moved = quarantine(settings, storage, document, stage="extract", error="not a PDF", dag_id="d", run_id="r")
    assert storage.read_bytes(moved) == b"not a pdf" and storage.exists(moved + NOTE_SUFFIX)
    assert storage.read_bytes(uri) == b"%PDF-1.7 the fixed file"


def test_an_upload_just_before_the_copy_is_neither_moved_nor_noted(env, monkeypatch):
    from include.control.quarantine import NOTE_SUFFIX, quarantine
    from include.storage import S3Backend

    settings, storage, uri, document = _bad_file("before.pdf")
    real_copy = S3Backend.copy

    def upload_then_copy(self, source_uri, target_uri, if_version=None):
        storage.write_bytes(uri, b"%PDF-1.7 the fixed file")  # after the version check, before the copy
        real_copy(self, source_uri, target_uri, if_version)

    monkeypatch.setattr(S3Backend, "copy", upload_then_copy)
    assert quarantine(settings, storage, document, stage="extract", error="not a PDF", dag_id="d", run_id="r") is None
    target = uri.replace("/inbox/", "/quarantine/")
    assert not storage.exists(target) and not storage.exists(target + NOTE_SUFFIX)
    assert storage.read_bytes(uri) == b"%PDF-1.7 the fixed file"
