"""Who caused a failure: the document (it fails alone and counts as its attempt) or the infrastructure
(the job fails, a retry may help, no document is charged), by the classes and statuses of the clients the
stages really use."""

from __future__ import annotations

import botocore.exceptions
import httpx
import openai
import pytest

from include.backends.vector_stores import EmbedderMismatch
from include.failures import is_infrastructure
from include.stages.base import BadFileError, DocumentError
from include.storage import ObjectNotFound, StorageError


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _openai_error(cls, status: int):
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/embeddings")
    return cls("upstream says no", response=httpx.Response(status, request=request), body=None)


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
    botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    botocore.exceptions.NoCredentialsError(),
    _client_error(503, "SlowDown"),
    _client_error(403, "AccessDenied"),
    httpx.ConnectError("connection refused"),
    httpx.HTTPStatusError("bad gateway", request=httpx.Request("GET", "http://x"),
                          response=httpx.Response(502, request=httpx.Request("GET", "http://x"))),
    openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:1")),
    _openai_error(openai.RateLimitError, 429),
    _openai_error(openai.InternalServerError, 500),
    StorageError("s3://documents/x: unsupported URI scheme"),
    EmbedderMismatch("the store holds another embedder's vectors"),
], ids=lambda exc: type(exc).__name__)
def test_the_infrastructure_is_to_blame(exc):
    assert is_infrastructure(exc)


@pytest.mark.parametrize("exc", [
    ValueError("pdfium: data format error"),
    MemoryError(),
    KeyError("page"),
    _client_error(404, "NoSuchKey"),
    _openai_error(openai.BadRequestError, 400),  # e.g. a prompt over the model's context
    ObjectNotFound("no object at s3://documents/inbox/a.pdf"),
    DocumentError("s3://documents/inbox/a.pdf: 20000 pages is over the limit"),
    BadFileError("s3://documents/inbox/a.pdf: not a PDF"),
], ids=lambda exc: type(exc).__name__)
def test_the_document_is_to_blame(exc):
    assert not is_infrastructure(exc)


def test_an_error_raised_from_an_outage_is_the_outage_unless_it_says_otherwise():
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as outage:
            raise RuntimeError("upsert failed") from outage
    except RuntimeError as wrapped:
        assert is_infrastructure(wrapped)
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            raise DocumentError("s3://documents/inbox/a.pdf: changed while it was read")  # noqa: B904
    except DocumentError as declared:
        assert not is_infrastructure(declared)
