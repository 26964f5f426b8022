"""Who caused a failure inside a stage: the document being worked on, or the infrastructure around it.

- **The document**: a ``DocumentError`` (a bad file, a bound it exceeds), and any other exception
  raised while working on it (a pdfium or spaCy error, a ``MemoryError``, a bug that only its
  content reaches), and a worker that dies on it when it runs alone. It fails that document alone,
  the rest of its batch goes on, and it counts as one of the document's attempts
  (``PIPELINE_MAX_ATTEMPTS``); a bad file goes to quarantine.
- **The infrastructure**: the object store, the vector store, a model API, the network or the
  cluster is down, slow, refusing our credentials or overloaded. It fails the job, which Airflow
  retries; it never counts against a document: the next run tries every document of the batch again.

An exception says which it is with an ``infrastructure`` attribute (``True`` or ``False``);
otherwise the classes and HTTP statuses of the clients the stages use decide. Only the clients a
process has imported are looked at: an exception of a library that was never imported cannot
have been raised.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

# HTTP statuses that say the service, not the request, is at fault (or our credentials are).
_INFRASTRUCTURE_STATUS = frozenset({401, 403, 407, 408, 425, 429}) | frozenset(range(500, 600))

# Transport-level errors of the clients the stages use: (module, class), matched only when imported.
_TRANSPORT_ERRORS = (
    ("botocore.exceptions", "HTTPClientError"),  # connection closed, read and connect timeouts
    ("botocore.exceptions", "ConnectionError"),  # endpoint unreachable
    ("botocore.exceptions", "NoCredentialsError"),
    ("httpx", "TransportError"),  # the Chroma and OpenAI clients
    ("urllib3.exceptions", "HTTPError"),  # Pinecone's client
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
    ("openai", "APIConnectionError"),  # its timeout error is one
)


def is_infrastructure(exc: BaseException) -> bool:
    """True when the exception, or one it was raised from, is the infrastructure's doing."""
    for link in _chain(exc):
        declared = getattr(type(link), "infrastructure", None)
        if declared is not None:
            return bool(declared)
        if isinstance(link, (ConnectionError, TimeoutError)) or _is_transport_error(link):
            return True
        if _http_status(link) in _INFRASTRUCTURE_STATUS:
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _is_transport_error(exc: BaseException) -> bool:
    for module_name, class_name in _TRANSPORT_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an API error carries: botocore's ``response`` dict, httpx's and OpenAI's
    ``status_code``, Pinecone's ``status``."""
    for name in ("status_code", "status"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return value if isinstance(value, int) else None
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None
