"""A local fake of Pinecone (control plane + data plane) that the real ``pinecone`` SDK talks to.

What is faked
-------------
One ``ThreadingHTTPServer`` on ``127.0.0.1`` (free port, background thread) speaks the REST
wire format of the installed SDK, ``pinecone==10.2.0`` (API version ``2026-07``):

* control plane: ``POST /indexes`` (create; dense serverless indexes only, i.e. the
  ``schema={"fields": {"_values": {"type": "dense_vector", ...}}}`` +
  ``deployment={"deployment_type": "managed", ...}`` body that ``pc.create_index(...,
  spec=ServerlessSpec(...), dimension=..., metric=...)`` is translated to; 409 if the name is
  taken), ``GET /indexes`` (list), ``GET /indexes/{name}`` (describe, 404 when absent, which is
  what ``has_index`` relies on), ``DELETE /indexes/{name}`` (202; 403 with deletion protection).
* data plane, per index: ``POST /vectors/upsert``, ``POST /query`` (by vector or id; top_k;
  include_values / include_metadata; metadata filter; scores per the index metric, best first),
  ``GET /vectors/fetch``, ``POST /vectors/delete`` (ids / filter / deleteAll),
  ``POST /describe_index_stats``, ``GET /vectors/list`` (id prefix, ``limit``,
  ``paginationToken``, which ``Index.list`` / ``Index.list_paginated`` follow).
* metadata filters: ``$eq $ne $in $nin $gt $gte $lt $lte $exists $and $or`` and the implicit
  equality form ``{"field": "value"}``; a list-valued field matches ``$eq``/``$in`` when any
  element does. A record *without* the field matches ``$ne``/``$nin`` (the fake's choice).
* scores: cosine similarity and dot product (higher is better) and, for ``euclidean``, the
  squared Euclidean distance (lower is better), as Pinecone documents.
* like the service, metadata numbers come back as floats, ``null`` metadata values are dropped,
  the default namespace is reported as ``"__default__"`` by describe_index_stats (``""`` and
  ``"__default__"`` address the same namespace), and a rejected upsert stores nothing.

Not faked: sparse / hybrid vectors, integrated embedding, document (schema) indexes, pod and
BYOC deployments, configure, collections, backups, namespaces API, imports, update, gRPC.

Limits (HTTP 400 in the service's error shape when broken)
----------------------------------------------------------
Named constants below, from Pinecone's docs, "Limits" page (Database limits:
https://docs.pinecone.io/reference/api/database-limits, operation limits at
https://docs.pinecone.io/reference/api/database-limits/operation-limits): upsert request body
over 2 MB, more than 1,000 vectors per upsert, a vector whose dimension differs from the
index's, metadata over 40 KB per record (compact JSON, UTF-8 bytes), ids over 512 characters,
top_k over 10,000; also more than 1,000 ids per fetch/delete and dense dimension over 20,000.

Error bodies copy the two shapes Pinecone uses: control plane
``{"error": {"code": "ALREADY_EXISTS", "message": ...}, "status": 409}``, data plane (gRPC
gateway) ``{"code": 3, "message": ..., "details": []}``. The SDK raises ``ApiError`` (alias
``PineconeApiException``) for 400, ``UnauthorizedError`` for 401, ``RateLimitError`` for 429
and ``ServiceError`` for 5xx.

Pointing the SDK at it (plain http on both planes)
--------------------------------------------------
The SDK keeps whatever scheme a host carries and only prepends ``https://`` to a bare host
(``pinecone._internal.config.normalize_host``), so:

* control plane: pass ``host=fake.control_host`` (``"http://127.0.0.1:PORT"``) to ``Pinecone``
  (the ``PINECONE_CONTROLLER_HOST`` variable works too);
* data plane: describe_index returns ``host="http://127.0.0.1:PORT/data-plane/<index>"`` (the
  SDK's httpx client keeps a path prefix on its base URL), so ``pc.index(name=...)`` (or
  ``pc.Index(...)``) lands here over http. Plain http to loopback raises no ``RuntimeWarning``;
  the SDK only warns for public hosts. Use the REST client: ``grpc=True`` is not served.

    from pinecone import Pinecone, ServerlessSpec
    from tests.fakes.pinecone_server import FakePinecone

    with FakePinecone() as fake:
        pc = Pinecone(api_key=fake.api_key, host=fake.control_host)
        pc.create_index(name="docs", dimension=3, metric="cosine",
                        spec=ServerlessSpec(cloud="aws", region="us-east-1"))
        index = pc.index(name="docs")
        index.upsert(vectors=[("a", [1.0, 0.0, 0.0], {"lang": "en"})])
        assert fake.vectors("docs")["a"] == ([1.0, 0.0, 0.0], {"lang": "en"})
        assert fake.count("/vectors/upsert", status=200) == 1

Retries: the data-plane REST client always uses the SDK's default policy (4 attempts on
408/429/500/502/503/504, backoff honouring ``Retry-After``); ``Pinecone(retry_config=...)`` does
not reach it. ``fail_next(n, status)`` makes the next *n* data-plane requests fail; 429s carry
``Retry-After: 0`` by default so a test does not sleep. Note that the SDK keeps a process-wide
retry budget per bare hostname ("127.0.0.1"): after about 50 net retryable failures in one
process it stops retrying.

Observability: ``fake.requests`` (method, path, status, body bytes, vectors per upsert),
``fake.count(fragment, status=None)``, ``fake.vectors(index, namespace)``. Request headers are
never stored or printed, so the API key never reaches a log.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import math
import operator
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

__all__ = [
    "DATA_PLANE_PREFIX",
    "DEFAULT_API_KEY",
    "MAX_DENSE_DIMENSION",
    "MAX_IDS_PER_FETCH_OR_DELETE",
    "MAX_ID_LENGTH",
    "MAX_METADATA_BYTES_PER_RECORD",
    "MAX_TOP_K",
    "MAX_UPSERT_REQUEST_BYTES",
    "MAX_VECTORS_PER_UPSERT",
    "FakePinecone",
    "RequestRecord",
]

# --- Service limits --------------------------------------------------------------------------
# Source: Pinecone docs, "Limits" page (https://docs.pinecone.io/reference/api/database-limits,
# operation limits: https://docs.pinecone.io/reference/api/database-limits/operation-limits).
# The docs write "2 MB" and "40 KB" without saying decimal or binary. The service's own message
# for metadata reads "exceeds the limit of 40960 bytes per vector", so both are taken as binary;
# code under test should batch below 2,000,000 bytes to be safe either way.
MAX_UPSERT_REQUEST_BYTES = 2 * 1024 * 1024  # "Max upsert request size: 2 MB"
MAX_VECTORS_PER_UPSERT = 1_000  # "Max batch size for records with vectors: 1,000 records"
MAX_METADATA_BYTES_PER_RECORD = 40 * 1024  # "Max metadata size per record: 40 KB"
MAX_ID_LENGTH = 512  # "Max length for a record ID: 512 characters"
MAX_TOP_K = 10_000  # "Max top_k value: 10,000"
MAX_IDS_PER_FETCH_OR_DELETE = 1_000  # "Max records per fetch / delete request: 1,000"
MAX_DENSE_DIMENSION = 20_000  # "Max dimensionality for dense vectors: 20,000"
# Page size of GET /vectors/list: the service's default, and the SDK's own ceiling
# (pinecone/_internal/validation.py LIST_LIMIT_MAX).
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 100
# Index names: 1-45 lowercase alphanumerics or '-', starting and ending alphanumeric.
_INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$")

DEFAULT_API_KEY = "test-key"
# Index hosts are http://127.0.0.1:PORT/data-plane/<index>: one port serves both planes and the
# path prefix tells which index a data-plane request is for (real hosts differ per index instead).
DATA_PLANE_PREFIX = "/data-plane"
_DEFAULT_NAMESPACE_NAME = "__default__"
_METRICS = frozenset({"cosine", "euclidean", "dotproduct"})

# gRPC status codes the data-plane gateway puts in "code", and the control plane's string codes.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 413: 3, 429: 8, 500: 13, 503: 14, 504: 4}
_CONTROL_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

Metadata = dict[str, Any]
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake answered it. Headers (and so the API key) are never kept."""

    method: str
    path: str  # without the query string
    status: int
    body_bytes: int
    vectors: int | None  # vectors in the request body, for upserts only
    index: str | None  # the index a data-plane request addressed; None on the control plane


@dataclass
class _Record:
    values: list[float]
    metadata: Metadata | None


@dataclass
class _Index:
    name: str
    dimension: int
    metric: str
    field_name: str
    cloud: str
    region: str
    deletion_protection: str
    tags: dict[str, str] | None
    # namespace ("" is the default one) -> id -> record; empty namespaces are dropped, as the
    # service stops reporting them.
    namespaces: dict[str, dict[str, _Record]] = field(default_factory=dict)


@dataclass
class _Response:
    status: int
    payload: Any = None  # JSON-serialisable; None sends an empty body
    headers: dict[str, str] = field(default_factory=dict)


class _HttpError(Exception):
    """An error answer; the plane that raised it decides the body's shape."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _bad(message: str) -> _HttpError:
    return _HttpError(400, message)


def _control_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": _CONTROL_CODES.get(status, "UNKNOWN"), "message": message}, "status": status}


def _data_error(status: int, message: str) -> dict[str, Any]:
    return {"code": _GRPC_CODES.get(status, 2), "message": message, "details": []}


# --- Metadata filters ------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(stored: Any, wanted: Any) -> bool:
    """Equality that keeps booleans apart from numbers (in Python True == 1)."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if _is_number(stored) and _is_number(wanted):
        return float(stored) == float(wanted)
    return isinstance(stored, str) and isinstance(wanted, str) and stored == wanted


def _holds(metadata: Mapping[str, Any], name: str, wanted: Any) -> bool:
    """Whether the field equals *wanted*, or, for a list field, has it as an element."""
    if name not in metadata:
        return False
    stored = metadata[name]
    if isinstance(stored, list):
        return any(_same(element, wanted) for element in stored)
    return _same(stored, wanted)


def _require_scalar(op: str, operand: Any) -> None:
    if not isinstance(operand, (str, int, float, bool)):
        raise _bad(f"Invalid filter: {op} expects a string, number or boolean, got {json.dumps(operand)}")


_RANGE_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _compile_operator(name: str, op: str, operand: Any) -> Predicate:
    if op in ("$eq", "$ne"):
        _require_scalar(op, operand)
        if op == "$eq":
            return lambda m: _holds(m, name, operand)
        return lambda m: not _holds(m, name, operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise _bad(f"Invalid filter: {op} expects an array, got {json.dumps(operand)}")
        for item in operand:
            _require_scalar(op, item)
        if op == "$in":
            return lambda m: any(_holds(m, name, item) for item in operand)
        return lambda m: not any(_holds(m, name, item) for item in operand)
    if op in _RANGE_OPERATORS:
        if not _is_number(operand):
            raise _bad(f"Invalid filter: {op} expects a number, got {json.dumps(operand)}")
        compare = _RANGE_OPERATORS[op]
        return lambda m: _is_number(m.get(name)) and compare(float(m[name]), float(operand))
    if op == "$exists":
        if not isinstance(operand, bool):
            raise _bad(f"Invalid filter: $exists expects a boolean, got {json.dumps(operand)}")
        return lambda m: (name in m) == operand
    raise _bad(f"Invalid filter: unknown operator {op!r} on field {name!r}")


def _compile_clause(key: str, value: Any) -> Predicate:
    if key in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise _bad(f"Invalid filter: {key} expects a non-empty array of filters")
        parts = [compile_filter(part) for part in value]
        if key == "$and":
            return lambda m: all(part(m) for part in parts)
        return lambda m: any(part(m) for part in parts)
    if key.startswith("$"):
        raise _bad(f"Invalid filter: unknown top-level operator {key!r}")
    if isinstance(value, dict):
        if not value:
            raise _bad(f"Invalid filter: empty condition for field {key!r}")
        conditions = [_compile_operator(key, op, operand) for op, operand in value.items()]
        return lambda m: all(condition(m) for condition in conditions)
    # {"field": "value"} is shorthand for {"field": {"$eq": "value"}}.
    return _compile_operator(key, "$eq", value)


def compile_filter(expression: Any) -> Predicate:
    """Turn a Pinecone metadata filter into a predicate on a record's metadata (400 if invalid)."""
    if not isinstance(expression, dict):
        raise _bad("Invalid filter: a filter must be a JSON object")
    clauses = [_compile_clause(key, value) for key, value in expression.items()]
    return lambda metadata: all(clause(metadata) for clause in clauses)


# --- Request parsing helpers -----------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise _bad("Request body must be a JSON object")
    return parsed


def _namespace(value: Any) -> str:
    """The stored namespace key: "" and "__default__" both mean the default namespace."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad("namespace must be a string")
    return "" if value == _DEFAULT_NAMESPACE_NAME else value


def _check_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad("Vector ID must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise _bad(f"Vector ID must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    return value


def _check_values(raw: Any, dimension: int, what: str) -> list[float]:
    if not isinstance(raw, list) or not all(_is_number(v) for v in raw):
        raise _bad(f"{what} values must be an array of numbers")
    if len(raw) != dimension:
        raise _bad(f"{what} dimension {len(raw)} does not match the dimension of the index {dimension}")
    values = [float(v) for v in raw]
    if not all(math.isfinite(v) for v in values):
        raise _bad(f"{what} values must be finite numbers")
    if not any(values):
        raise _bad("Dense vectors must contain at least one non-zero value")
    return values


def _metadata_bytes(metadata: Metadata) -> int:
    return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _check_metadata(raw: Any) -> Metadata | None:
    """Validate one record's metadata and return it as the service stores it."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("Metadata must be a JSON object")
    size = _metadata_bytes(raw)
    if size > MAX_METADATA_BYTES_PER_RECORD:
        raise _bad(
            f"Metadata size is {size} bytes, which exceeds the limit of "
            f"{MAX_METADATA_BYTES_PER_RECORD} bytes per vector"
        )
    stored: Metadata = {}
    for key, value in raw.items():
        if value is None:
            continue  # the service strips null values rather than refusing them
        if isinstance(value, (bool, str)):
            stored[key] = value
        elif _is_number(value):
            stored[key] = float(value)  # numbers are float64 in Pinecone and come back as such
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            stored[key] = list(value)
        else:
            raise _bad(
                "Metadata value must be a string, number, boolean or list of strings, "
                f"got {json.dumps(value)[:16]!r} for field {key!r}"
            )
    return stored


def _count_vectors(body: bytes) -> int | None:
    """Vectors in an upsert body, for the request log; None when the body does not parse."""
    try:
        vectors = json.loads(body).get("vectors")
    except (ValueError, AttributeError):
        return None
    return len(vectors) if isinstance(vectors, list) else None


def _scores(metric: str, query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    if metric == "dotproduct":
        return matrix @ query
    if metric == "cosine":
        return (matrix @ query) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    # Pinecone's euclidean score is the squared distance (lower is more similar).
    return ((matrix - query) ** 2).sum(axis=1)


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode()


def _decode_token(token: str) -> str:
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _bad("Invalid pagination token") from exc
    if not isinstance(after, str):
        raise _bad("Invalid pagination token")
    return after


def _int_param(params: Mapping[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, [""])[-1]
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise _bad(f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise _bad(f"{name} must be between {low} and {high}, got {value}")
    return value


# --- HTTP plumbing -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must never keep the test process alive

    def __init__(self, fake: FakePinecone) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes each connection after its answer, so close() never waits on idle
    # keep-alive connections held by the SDK's pool.
    protocol_version = "HTTP/1.0"
    server: _Server

    # http.server dispatches on do_<METHOD>; every method goes through one router.
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: nothing about a request (and never its headers) is printed."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        response = self.server.fake._serve(self.command, self.path, self.headers, body)
        data = b"" if response.payload is None else json.dumps(response.payload).encode("utf-8")
        try:
            self.send_response(response.status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout); nothing left to tell it


# --- The fake ------------------------------------------------------------------------------------


class FakePinecone:
    """Pinecone's control and data planes on ``127.0.0.1``, started on construction.

    Use as a context manager or call :meth:`close`. All state sits behind one lock, so tests may
    drive it from several threads and read it while the SDK writes.
    """

    def __init__(self, api_key: str = DEFAULT_API_KEY, *, oversize_status: int = 400) -> None:
        """*oversize_status* is the status for an upsert body over 2 MB: 400 as the service
        historically answered; pinecone 10.2.0's docstrings expect 413 (``PayloadTooLargeError``),
        so a test can ask for that instead."""
        self.api_key = api_key
        self._oversize_status = oversize_status
        self._lock = threading.RLock()
        self._indexes: dict[str, _Index] = {}
        self._log: list[RequestRecord] = []
        self._faults: deque[tuple[int, float | None]] = deque()
        self._request_ids = itertools.count(1)
        self._server = _Server(self)
        # A short poll interval keeps close() (which waits for the loop to notice) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fake-pinecone-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and free the port. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def control_host(self) -> str:
        """Pass as ``Pinecone(api_key=..., host=fake.control_host)``."""
        return f"http://127.0.0.1:{self.port}"

    def data_host(self, index: str) -> str:
        """The host describe_index reports for *index* (``pc.index(host=...)`` also takes it)."""
        return f"{self.control_host}{DATA_PLANE_PREFIX}/{quote(index, safe='')}"

    # -- observability ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request answered so far, oldest first."""
        with self._lock:
            return list(self._log)

    def count(self, path_fragment: str, status: int | None = None) -> int:
        """Requests whose path contains *path_fragment* (and answered *status*, if given)."""
        with self._lock:
            return sum(
                1
                for record in self._log
                if path_fragment in record.path and (status is None or record.status == status)
            )

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def index_names(self) -> list[str]:
        with self._lock:
            return sorted(self._indexes)

    def vectors(self, index: str, namespace: str = "") -> dict[str, tuple[list[float], Metadata | None]]:
        """A copy of what *index* stores in *namespace*: id -> (values, metadata)."""
        with self._lock:
            if index not in self._indexes:
                raise KeyError(f"no index named {index!r}")
            records = self._indexes[index].namespaces.get(_namespace(namespace), {})
            return {
                vid: (list(rec.values), None if rec.metadata is None else dict(rec.metadata))
                for vid, rec in records.items()
            }

    # -- fault injection ----------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """Answer the next *n* data-plane requests with *status* (after the key check).

        A 429 always carries ``Retry-After`` (``retry_after``, default 0 so the SDK retries
        without sleeping); other statuses carry it only when *retry_after* is given.
        """
        if n < 0 or status < 400:
            raise ValueError("fail_next needs n >= 0 and an error status (>= 400)")
        if status == 429 and retry_after is None:
            retry_after = 0
        with self._lock:
            self._faults.extend([(status, retry_after)] * n)

    # -- request handling -----------------------------------------------------------------------

    def _serve(self, method: str, raw_path: str, headers: Message, body: bytes) -> _Response:
        parts = urlsplit(raw_path)
        index_name, sub_path = self._split_data_path(parts.path)
        shape = _control_error if index_name is None else _data_error
        try:
            self._authenticate(headers)
            if index_name is None:
                response = self._route_control(method, parts.path, body)
            else:
                self._raise_injected_fault()
                response = self._route_data(method, index_name, sub_path, parts.query, body)
        except _HttpError as exc:
            response = _Response(exc.status, shape(exc.status, exc.message), exc.headers)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake: answer 500 so the test sees it
            response = _Response(500, shape(500, f"FakePinecone internal error: {exc!r}"))
        response.headers.setdefault("x-pinecone-request-id", f"fake-{next(self._request_ids)}")
        upsert = index_name is not None and sub_path == "/vectors/upsert"
        self._record(
            RequestRecord(
                method=method,
                path=parts.path,
                status=response.status,
                body_bytes=len(body),
                vectors=_count_vectors(body) if upsert else None,
                index=index_name,
            )
        )
        return response

    @staticmethod
    def _split_data_path(path: str) -> tuple[str | None, str]:
        """("index", "/vectors/upsert") for a data-plane path, (None, path) otherwise."""
        if not path.startswith(DATA_PLANE_PREFIX + "/"):
            return None, path
        rest = path[len(DATA_PLANE_PREFIX) + 1 :]
        name, _, sub = rest.partition("/")
        return unquote(name), "/" + sub

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _authenticate(self, headers: Message) -> None:
        supplied = headers.get("Api-Key")
        if supplied is None:
            raise _HttpError(401, "API key is missing")
        # Constant-time compare, and the message never echoes what was sent.
        if not hmac.compare_digest(supplied.encode("utf-8"), self.api_key.encode("utf-8")):
            raise _HttpError(401, "Invalid API Key")

    def _raise_injected_fault(self) -> None:
        with self._lock:
            if not self._faults:
                return
            status, retry_after = self._faults.popleft()
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        raise _HttpError(status, f"Injected fault (FakePinecone.fail_next): HTTP {status}", headers)

    # -- control plane ----------------------------------------------------------------------------

    def _route_control(self, method: str, path: str, body: bytes) -> _Response:
        if path == "/indexes" and method == "POST":
            return _Response(201, self._create_index(_json_object(body)))
        if path == "/indexes" and method == "GET":
            with self._lock:
                return _Response(200, {"indexes": [self._index_model(i) for i in self._indexes.values()]})
        if path.startswith("/indexes/") and path.count("/") == 2:
            name = unquote(path[len("/indexes/") :])
            if method == "GET":
                with self._lock:
                    return _Response(200, self._index_model(self._get_index(name, control=True)))
            if method == "DELETE":
                self._delete_index(name)
                return _Response(202)
        raise _HttpError(404, f"FakePinecone does not serve {method} {path}")

    def _get_index(self, name: str, *, control: bool) -> _Index:
        index = self._indexes.get(name)
        if index is None:
            raise _HttpError(404, f"Resource {name} not found" if control else "Index not found")
        return index

    def _create_index(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not _INDEX_NAME.match(name):
            raise _bad(
                "Name must consist of lower case alphanumeric characters or '-', start and end "
                "with an alphanumeric character, and be 1-45 characters long"
            )
        field_name, dimension, metric = self._dense_field(body.get("schema"))
        cloud, region = self._managed_deployment(body.get("deployment"))
        protection = body.get("deletion_protection") or "disabled"
        if protection not in ("enabled", "disabled"):
            raise _bad("deletion_protection must be 'enabled' or 'disabled'")
        tags = body.get("tags")
        index = _Index(name, dimension, metric, field_name, cloud, region, protection, tags)
        with self._lock:
            if name in self._indexes:
                raise _HttpError(409, f"Resource {name} already exists")
            self._indexes[name] = index
            return self._index_model(index)

    @staticmethod
    def _dense_field(schema: Any) -> tuple[str, int, str]:
        """(field name, dimension, metric) of the schema's single dense_vector field."""
        fields = schema.get("fields") if isinstance(schema, dict) else None
        if not isinstance(fields, dict) or len(fields) != 1:
            raise _bad("FakePinecone serves indexes whose schema is exactly one dense_vector field")
        field_name, spec = next(iter(fields.items()))
        if not isinstance(spec, dict) or spec.get("type") != "dense_vector":
            raise _bad("FakePinecone serves dense_vector indexes only")
        dimension, metric = spec.get("dimension"), spec.get("metric", "cosine")
        if not isinstance(dimension, int) or isinstance(dimension, bool):
            raise _bad("dimension must be an integer")
        if not 1 <= dimension <= MAX_DENSE_DIMENSION:
            raise _bad(f"dimension must be between 1 and {MAX_DENSE_DIMENSION}, got {dimension}")
        if metric not in _METRICS:
            raise _bad(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        return field_name, dimension, metric

    @staticmethod
    def _managed_deployment(deployment: Any) -> tuple[str, str]:
        if deployment is None:  # the API's default deployment
            return "aws", "us-east-1"
        if not isinstance(deployment, dict) or deployment.get("deployment_type") != "managed":
            raise _bad("FakePinecone serves serverless (deployment_type 'managed') indexes only")
        cloud, region = deployment.get("cloud"), deployment.get("region")
        if not isinstance(cloud, str) or not isinstance(region, str):
            raise _bad("A managed deployment needs cloud and region")
        return cloud, region

    def _delete_index(self, name: str) -> None:
        with self._lock:
            index = self._get_index(name, control=True)
            if index.deletion_protection == "enabled":
                raise _HttpError(
                    403,
                    f"Deletion protection is enabled for index {name}. Disable it before deleting.",
                )
            del self._indexes[name]

    def _index_model(self, index: _Index) -> dict[str, Any]:
        return {
            "name": index.name,
            "host": self.data_host(index.name),
            "status": {"ready": True, "state": "Ready"},
            "schema": {
                "fields": {
                    index.field_name: {
                        "type": "dense_vector",
                        "dimension": index.dimension,
                        "metric": index.metric,
                    }
                }
            },
            "deployment": {"deployment_type": "managed", "cloud": index.cloud, "region": index.region},
            "deletion_protection": index.deletion_protection,
            "tags": index.tags,
        }

    # -- data plane -----------------------------------------------------------------------------

    def _route_data(self, method: str, name: str, sub_path: str, query: str, body: bytes) -> _Response:
        routes: dict[tuple[str, str], Callable[[_Index, bytes, dict[str, list[str]]], Any]] = {
            ("POST", "/vectors/upsert"): self._upsert,
            ("POST", "/query"): self._query,
            ("GET", "/vectors/fetch"): self._fetch,
            ("POST", "/vectors/delete"): self._delete,
            ("POST", "/describe_index_stats"): self._stats,
            ("GET", "/vectors/list"): self._list,
        }
        handler = routes.get((method, sub_path))
        if handler is None:
            raise _HttpError(404, f"FakePinecone does not serve {method} {sub_path}")
        params = parse_qs(query, keep_blank_values=True)
        with self._lock:  # one lock for the whole operation: each request is atomic
            return _Response(200, handler(self._get_index(name, control=False), body, params))

    def _upsert(self, index: _Index, body: bytes, _params: dict[str, list[str]]) -> dict[str, Any]:
        if len(body) > MAX_UPSERT_REQUEST_BYTES:
            raise _HttpError(
                self._oversize_status,
                f"Request size {len(body) / 1024 / 1024:.1f}MB exceeds the maximum supported size of 2MB",
            )
        request = _json_object(body)
        raw_vectors = request.get("vectors")
        if not isinstance(raw_vectors, list) or not raw_vectors:
            raise _bad("vectors must be a non-empty array")
        if len(raw_vectors) > MAX_VECTORS_PER_UPSERT:
            raise _bad(
                f"Upsert request has {len(raw_vectors)} vectors; the maximum is "
                f"{MAX_VECTORS_PER_UPSERT} vectors per request"
            )
        namespace = _namespace(request.get("namespace"))
        # Validate the whole batch before writing: the service rejects a batch in its entirety.
        parsed = [self._parse_vector(index, raw) for raw in raw_vectors]
        store = index.namespaces.setdefault(namespace, {})
        for vid, record in parsed:
            store[vid] = record
        return {"upsertedCount": len(parsed)}

    @staticmethod
    def _parse_vector(index: _Index, raw: Any) -> tuple[str, _Record]:
        if not isinstance(raw, dict):
            raise _bad("Each vector must be a JSON object")
        if raw.get("sparseValues") is not None:
            raise _bad("FakePinecone does not support sparse values")
        vid = _check_id(raw.get("id"))
        values = _check_values(raw.get("values"), index.dimension, "Vector")
        return vid, _Record(values, _check_metadata(raw.get("metadata")))

    def _query(self, index: _Index, body: bytes, _params: dict[str, list[str]]) -> dict[str, Any]:
        request = _json_object(body)
        top_k = request.get("topK")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise _bad(f"topK must be an integer between 1 and {MAX_TOP_K}, got {json.dumps(top_k)}")
        if request.get("sparseVector") is not None:
            raise _bad("FakePinecone does not support sparse queries")
        raw_namespace = request.get("namespace", "")
        records = index.namespaces.get(_namespace(raw_namespace), {})
        query = self._query_vector(index, request, records)
        predicate = compile_filter(request["filter"]) if request.get("filter") is not None else None
        result: dict[str, Any] = {"matches": [], "namespace": raw_namespace, "usage": {"readUnits": 1}}
        if query is None:
            return result  # querying by an id the namespace does not hold finds nothing
        candidates = [
            (vid, rec) for vid, rec in records.items() if predicate is None or predicate(rec.metadata or {})
        ]
        if not candidates:
            return result
        scores = _scores(index.metric, np.asarray(query), np.asarray([rec.values for _, rec in candidates]))
        lower_is_better = index.metric == "euclidean"
        ranked = sorted(
            zip(candidates, scores.tolist(), strict=True),
            key=lambda item: (item[1] if lower_is_better else -item[1], item[0][0]),
        )
        for (vid, rec), score in ranked[:top_k]:
            match: dict[str, Any] = {
                "id": vid,
                "score": float(score),
                "values": list(rec.values) if request.get("includeValues") else [],
            }
            if request.get("includeMetadata") and rec.metadata is not None:
                match["metadata"] = dict(rec.metadata)
            result["matches"].append(match)
        return result

    @staticmethod
    def _query_vector(
        index: _Index, request: dict[str, Any], records: dict[str, _Record]
    ) -> list[float] | None:
        """The query's vector: given, or the stored one of ``id`` (None if absent)."""
        has_vector, has_id = request.get("vector") is not None, request.get("id") is not None
        if has_vector and has_id:
            raise _bad("Cannot provide both ID and vector at the same time")
        if has_id:
            record = records.get(_check_id(request["id"]))
            return None if record is None else record.values
        if not has_vector:
            raise _bad("No query provided: pass a vector or an id")
        return _check_values(request["vector"], index.dimension, "Query vector")

    @staticmethod
    def _fetch(index: _Index, _body: bytes, params: dict[str, list[str]]) -> dict[str, Any]:
        ids = params.get("ids", [])
        if not ids:
            raise _bad("ids must be provided")
        if len(ids) > MAX_IDS_PER_FETCH_OR_DELETE:
            raise _bad(f"Cannot fetch more than {MAX_IDS_PER_FETCH_OR_DELETE} ids per request")
        raw_namespace = params.get("namespace", [""])[-1]
        records = index.namespaces.get(_namespace(raw_namespace), {})
        found: dict[str, Any] = {}
        for vid in map(_check_id, ids):
            record = records.get(vid)
            if record is None:
                continue  # absent ids are left out, not reported
            found[vid] = {"id": vid, "values": list(record.values)}
            if record.metadata is not None:
                found[vid]["metadata"] = dict(record.metadata)
        return {"vectors": found, "namespace": raw_namespace, "usage": {"readUnits": 1}}

    @staticmethod
    def _delete(index: _Index, body: bytes, _params: dict[str, list[str]]) -> dict[str, Any]:
        request = _json_object(body)
        namespace = _namespace(request.get("namespace"))
        ids, delete_all, expression = request.get("ids"), request.get("deleteAll"), request.get("filter")
        if sum(1 for selector in (ids, delete_all, expression) if selector) != 1:
            if expression == {}:
                raise _bad("Delete with empty metadata filter is not allowed")
            raise _bad("Exactly one of ids, deleteAll or filter must be provided")
        records = index.namespaces.get(namespace, {})
        if delete_all:
            records.clear()
        elif ids:
            if not isinstance(ids, list) or len(ids) > MAX_IDS_PER_FETCH_OR_DELETE:
                raise _bad(f"ids must be an array of at most {MAX_IDS_PER_FETCH_OR_DELETE} ids")
            for vid in map(_check_id, ids):
                records.pop(vid, None)
        else:
            predicate = compile_filter(expression)
            for vid in [vid for vid, rec in records.items() if predicate(rec.metadata or {})]:
                del records[vid]
        if not records:
            index.namespaces.pop(namespace, None)
        return {}

    @staticmethod
    def _stats(index: _Index, body: bytes, _params: dict[str, list[str]]) -> dict[str, Any]:
        if _json_object(body).get("filter") is not None:
            # Serverless indexes refuse a filter on describe_index_stats.
            raise _bad("describe_index_stats does not support filtering on serverless indexes")
        namespaces = {
            (name or _DEFAULT_NAMESPACE_NAME): {"vectorCount": len(records)}
            for name, records in index.namespaces.items()
            if records
        }
        return {
            "namespaces": namespaces,
            "dimension": index.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(entry["vectorCount"] for entry in namespaces.values()),
            "metric": index.metric,
            "vectorType": "dense",
        }

    @staticmethod
    def _list(index: _Index, _body: bytes, params: dict[str, list[str]]) -> dict[str, Any]:
        raw_namespace = params.get("namespace", [""])[-1]
        prefix = params.get("prefix", [""])[-1]
        limit = _int_param(params, "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT)
        token = params.get("paginationToken", [""])[-1]
        after = _decode_token(token) if token else None
        ids = sorted(
            vid
            for vid in index.namespaces.get(_namespace(raw_namespace), {})
            if vid.startswith(prefix) and (after is None or vid > after)
        )
        page = ids[:limit]
        result: dict[str, Any] = {
            "vectors": [{"id": vid} for vid in page],
            "namespace": raw_namespace,
            "usage": {"readUnits": 1},
        }
        if len(ids) > limit:
            result["pagination"] = {"next": _encode_token(page[-1])}
        return result
