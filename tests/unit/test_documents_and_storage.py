from __future__ import annotations

import pytest

from include.documents import describe, discover, document_id
from include.storage import ObjectNotFound, Storage, StorageError, join_uri, split_s3_uri


def test_document_id_is_stable_readable_and_changes_with_key_or_version():
    first = document_id("s3://b/inbox/Trial Protocol.pdf", "a" * 64)
    assert first == document_id("s3://b/inbox/Trial Protocol.pdf", "a" * 64)
    assert first.startswith("trial-protocol-")
    assert first != document_id("s3://b/inbox/Trial Protocol.pdf", "b" * 64)
    assert first != document_id("s3://b/other/Trial Protocol.pdf", "a" * 64)


def test_document_ids_of_plain_names_never_change():
    # Pinned: the same key and version tag must name the same document on every run.
    assert document_id("s3://b/inbox/Trial Protocol.pdf", "a" * 64) == "trial-protocol-48f8b408bce8"
    assert document_id("file:///tmp/inbox/report_v2.PDF", "b" * 64) == "report-v2-4386721dac7e"
    assert document_id("s3://documents/inbox/sub/a#1.pdf", "c" * 64) == "a-1-02d8a740086c"


def test_non_ascii_letters_keep_a_readable_stem():
    assert document_id("s3://b/inbox/Übersicht résumé.pdf", "a" * 64).startswith("ubersicht-resume-")
    assert document_id("s3://b/inbox/данные.pdf", "a" * 64).startswith("document-")


def test_file_storage_round_trip_listing_and_hash(settings):
    storage = Storage(settings)
    root = settings.inbox_uri
    storage.write_bytes(join_uri(root, "a.pdf"), b"%PDF-1.4 one")
    storage.write_json(join_uri(root, "sub", "b.json"), {"x": 1})
    assert storage.list(root) == [join_uri(root, "a.pdf"), join_uri(root, "sub", "b.json")]
    assert storage.read_json(join_uri(root, "sub", "b.json")) == {"x": 1}
    sha, size = storage.sha256(join_uri(root, "a.pdf"))
    assert size == 12 and len(sha) == 64
    with pytest.raises(ObjectNotFound, match="no object at"):
        storage.read_bytes(join_uri(root, "missing.pdf"))


def test_discover_lists_every_object_or_only_named_keys(settings):
    storage = Storage(settings)
    for name in ("a.pdf", "b.pdf", "notes.txt"):
        storage.write_bytes(join_uri(settings.inbox_uri, name), name.encode())
    everything = discover(storage, settings.inbox_uri)[0]
    assert [d.name for d in everything] == ["a.pdf", "b.pdf", "notes.txt"]
    only = discover(storage, settings.inbox_uri, ["b.pdf"])[0]
    assert [d.doc_id for d in only] == [everything[1].doc_id]


def test_every_object_counts_whatever_its_extension_or_case(settings):
    storage = Storage(settings)
    for name in ("REPORT.PDF", "scan.Pdf", "notes"):
        storage.write_bytes(join_uri(settings.inbox_uri, name), name.encode())
    names = sorted(d.name for d in discover(storage, settings.inbox_uri)[0])
    assert names == ["REPORT.PDF", "notes", "scan.Pdf"]


def test_a_document_that_vanished_after_listing_is_object_not_found(settings):
    storage = Storage(settings)
    storage.write_bytes(join_uri(settings.inbox_uri, "a.pdf"), b"%PDF-1.4")
    [uri] = storage.list(settings.inbox_uri)
    storage.delete(uri)
    with pytest.raises(ObjectNotFound, match="no object at"):
        describe(storage, uri)


def test_uri_helpers_reject_what_they_cannot_handle(settings):
    assert join_uri("s3://b/x/", "/y/", "z") == "s3://b/x/y/z"
    assert split_s3_uri("s3://bucket/key/with/parts") == ("bucket", "key/with/parts")
    with pytest.raises(StorageError):
        split_s3_uri("file:///tmp/x")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        Storage(settings).read_bytes("ftp://host/file")
