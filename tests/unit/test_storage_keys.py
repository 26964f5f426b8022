"""Any object key is a document, exactly: tricky names round-trip through storage and discovery."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from include.contract import DocumentRef
from include.documents import describe, discover, document_id, key_uris
from include.settings import PipelineSettings
from include.storage import (
    ObjectInfo,
    ObjectNotFound,
    S3Backend,
    Storage,
    StorageError,
    canonical_uri,
    file_uri_path,
    join_uri,
    split_s3_uri,
)

TRICKY_NAMES = [
    "a#1.pdf",
    "a#2.pdf",
    "what?.pdf",
    "with space.pdf",
    "100%.pdf",
    "Übersicht résumé.pdf",
    "REPORT.PDF",
    "sub dir/x#y.pdf",
]
SAME_BYTES = b"%PDF-1.4 same bytes under every name"


@pytest.fixture(params=["inbox", "in box#1 %20"])
def tricky_settings(request, tmp_path) -> PipelineSettings:
    # The inbox folder's own name is tricky too in the second run: only the keys may vary otherwise.
    return PipelineSettings(
        work_dir=tmp_path / "work",
        inbox_uri=(tmp_path / request.param).as_uri() + "/",
        artifacts_uri=(tmp_path / "artifacts").as_uri() + "/",
    )


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_a_tricky_key_round_trips_through_file_storage_and_discovery(tricky_settings, name):
    storage, inbox = Storage(tricky_settings), tricky_settings.inbox_uri
    uri = join_uri(inbox, name)
    storage.write_bytes(uri, SAME_BYTES)

    assert file_uri_path(uri) == file_uri_path(inbox) / name  # stored under its raw name
    assert storage.list(inbox) == [uri]
    assert storage.read_bytes(uri) == SAME_BYTES
    assert storage.exists(uri)
    [listed] = discover(storage, inbox)[0]
    assert listed.source_uri == uri
    assert listed.name == PurePosixPath(name).name
    assert discover(storage, inbox, [name])[0] == [listed]
    assert discover(storage, inbox, [uri])[0] == [listed]


def test_every_tricky_key_is_its_own_document(tricky_settings):
    storage, inbox = Storage(tricky_settings), tricky_settings.inbox_uri
    for name in TRICKY_NAMES:
        storage.write_bytes(join_uri(inbox, name), SAME_BYTES)
    documents = {doc.source_uri: doc for doc in discover(storage, inbox)[0]}
    assert sorted(documents) == sorted(join_uri(inbox, name) for name in TRICKY_NAMES)
    assert len({doc.doc_id for doc in documents.values()}) == len(TRICKY_NAMES)
    named = discover(storage, inbox, TRICKY_NAMES)[0]
    assert named == [documents[join_uri(inbox, name)] for name in TRICKY_NAMES]
    by_name = {doc.name: doc for doc in named}
    assert by_name["a#1.pdf"].doc_id.startswith("a-1-") and by_name["a#2.pdf"].doc_id.startswith("a-2-")
    assert by_name["Übersicht résumé.pdf"].doc_id.startswith("ubersicht-resume-")
    assert by_name["REPORT.PDF"].doc_id.startswith("report-")


def test_a_hand_spelled_file_uri_is_the_listed_document(settings):
    storage, inbox = Storage(settings), settings.inbox_uri
    storage.write_bytes(join_uri(inbox, "a#1 é.pdf"), SAME_BYTES)
    [listed] = discover(storage, inbox)[0]
    raw = f"file://{file_uri_path(inbox)}/a#1 é.pdf"
    assert raw != listed.source_uri
    assert describe(storage, raw) == listed
    assert discover(storage, inbox, [raw])[0] == [listed]


def test_file_uris_are_percent_encoded_and_decoded_without_fragment_or_query(tmp_path):
    path = tmp_path / "a#1?x=2 100%.pdf"
    assert join_uri(tmp_path.as_uri(), path.name) == path.as_uri()
    assert "%23" in path.as_uri() and "%3F" in path.as_uri() and "%25" in path.as_uri()
    assert file_uri_path(path.as_uri()) == path
    # A hand-written, unencoded URI still names the file; canonical_uri spells it as list does.
    raw = f"file://{tmp_path}/{path.name}"
    assert file_uri_path(raw) == path
    assert canonical_uri(raw) == path.as_uri()
    assert file_uri_path("file://localhost/tmp/x%20y") == Path("/tmp/x y")
    with pytest.raises(StorageError, match="not a local absolute"):
        file_uri_path("file://otherhost/tmp/x")


def test_s3_uris_carry_raw_keys():
    assert split_s3_uri("s3://b/dir/a#1?x=2 %.pdf") == ("b", "dir/a#1?x=2 %.pdf")
    assert split_s3_uri("s3://b//lead") == ("b", "/lead")  # a key may start with a slash
    assert split_s3_uri("S3://b/k") == ("b", "k")  # schemes are case-insensitive
    with pytest.raises(StorageError, match="no bucket"):
        split_s3_uri("s3:///key")
    assert join_uri("s3://b/inbox/", "sub dir/a#1?.pdf") == "s3://b/inbox/sub dir/a#1?.pdf"
    assert key_uris("s3://b/inbox/", ["a#1.pdf", "s3://b/inbox/x?y.pdf", "odd/http://z.pdf", "Übersicht.pdf"]) == [
        "s3://b/inbox/a#1.pdf",
        "s3://b/inbox/x?y.pdf",
        "s3://b/inbox/odd/http://z.pdf",
        "s3://b/inbox/Übersicht.pdf",
    ]
    for outside in ("s3://o/inbox/x.pdf", "s3://b/inbox-old/x.pdf", "s3://b/x.pdf"):
        with pytest.raises(ValueError, match=f"{outside}: not under the inbox s3://b/inbox/"):
            key_uris("s3://b/inbox/", [outside])
    ref = DocumentRef(
        doc_id="x", source_uri="s3://b/inbox/sub/a#1?x=2 %.pdf", content_sha256="0" * 64, size_bytes=1
    )
    assert ref.name == "a#1?x=2 %.pdf"
    assert document_id("s3://b/inbox/a#1.pdf", "0" * 64) != document_id("s3://b/inbox/a#2.pdf", "0" * 64)


def test_storage_dispatches_on_the_scheme_alone(settings):
    storage = Storage(settings)
    with pytest.raises(StorageError, match="not a URI"):
        storage.read_bytes("inbox/a#1.pdf")
    with pytest.raises(StorageError, match="unsupported URI scheme 'ftp'"):
        storage.read_bytes("ftp://host/a#b?c")


def _stubbed_s3() -> tuple[S3Backend, Stubber]:
    backend = S3Backend(endpoint_url=None, region="us-east-1")
    return backend, Stubber(backend._client)


def test_s3_sends_raw_keys_and_lists_raw_uris():
    backend, stub = _stubbed_s3()
    key = "inbox/sub dir/a#1?x=2 %.pdf"
    stub.add_response(
        "list_objects_v2",
        {"Contents": [{"Key": key, "Size": 7, "ETag": '"abc"'}, {"Key": "inbox/sub dir/", "Size": 0, "ETag": '"d"'}],
         "IsTruncated": False},
        {"Bucket": "b", "Prefix": "inbox/"},
    )
    stub.add_response("head_object", {}, {"Bucket": "b", "Key": key})
    with stub:
        assert backend.list("s3://b/inbox/") == [ObjectInfo(f"s3://b/{key}", 7, "abc")]
        assert backend.exists(f"s3://b/{key}")
    stub.assert_no_pending_responses()


def test_s3_missing_objects_are_told_by_error_code_not_message():
    backend, stub = _stubbed_s3()
    uri = "s3://b/inbox/a#1.pdf"
    params = {"Bucket": "b", "Key": "inbox/a#1.pdf"}
    stub.add_client_error("get_object", "NoSuchKey", "whatever text", 404, expected_params=params)
    stub.add_client_error("get_object", "NoSuchKey", "whatever text", 404, expected_params=params)
    stub.add_client_error("head_object", "404", "", 404, expected_params=params)  # HEAD: no body, no code
    stub.add_client_error("get_object", "NoSuchBucket", "The specified key does not exist.", 404)
    stub.add_client_error("head_object", "403", "Not Found", 403)
    with stub:
        with pytest.raises(ObjectNotFound, match=re.escape(uri)):
            backend.read_bytes(uri)
        with pytest.raises(ObjectNotFound, match=re.escape(uri)):
            list(backend.iter_chunks(uri))
        assert backend.exists(uri) is False
        with pytest.raises(ClientError, match="NoSuchBucket"):
            backend.read_bytes(uri)
        with pytest.raises(ClientError, match="403"):
            backend.exists(uri)
    stub.assert_no_pending_responses()


def test_describe_raises_object_not_found_when_the_object_vanished(settings):
    storage = Storage(settings)
    uri = join_uri(settings.inbox_uri, "gone #1.pdf")
    storage.write_bytes(uri, SAME_BYTES)
    [listed] = storage.list(settings.inbox_uri)
    storage.delete(listed)
    assert not storage.exists(listed)
    with pytest.raises(ObjectNotFound, match=re.escape(listed)):
        describe(storage, listed)
    # Discovery goes on: the vanished object is set apart with its reason, never fails the listing.
    documents, unreadable = discover(storage, settings.inbox_uri, ["gone #1.pdf"])
    assert documents == [] and [u.source_uri for u in unreadable] == [listed]
    assert "no such object" in unreadable[0].error
