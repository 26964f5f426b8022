"""tests/fakes/pinecone_server.py driven through the real pinecone SDK (10.2.0, REST client).

Each test gets its own fake on a free port; tiny 4-d vectors keep the file fast.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from pinecone import (
    ApiError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    Pinecone,
    PineconeApiException,
    PineconeValueError,
    RateLimitError,
    ServerlessSpec,
    ServiceError,
    UnauthorizedError,
)
from pinecone.index import Index

from tests.fakes.pinecone_server import (
    MAX_ID_LENGTH,
    MAX_METADATA_BYTES_PER_RECORD,
    MAX_TOP_K,
    MAX_UPSERT_REQUEST_BYTES,
    MAX_VECTORS_PER_UPSERT,
    FakePinecone,
)

SPEC = ServerlessSpec(cloud="aws", region="us-east-1")


@pytest.fixture
def fake() -> Iterator[FakePinecone]:
    with FakePinecone() as server:
        yield server


@pytest.fixture
def pc(fake: FakePinecone) -> Iterator[Pinecone]:
    client = Pinecone(api_key=fake.api_key, host=fake.control_host)
    yield client
    client.close()


def _open_index(pc: Pinecone, name: str = "docs", metric: str = "cosine") -> Index:
    pc.create_index(name=name, dimension=4, metric=metric, spec=SPEC)
    return pc.index(name=name)


@pytest.fixture
def index(pc: Pinecone) -> Iterator[Index]:
    idx = _open_index(pc)
    yield idx
    idx.close()


@pytest.fixture
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the SDK's retry back-off instead of sleeping it (its documented patch seam)."""
    slept: list[float] = []
    monkeypatch.setattr("pinecone._internal.http_client._retry_sleep", slept.append)
    return slept


DOCS = [
    ("en-1", [1.0, 0.0, 0.0, 0.0], {"lang": "en", "year": 2020, "tags": ["a", "b"]}),
    ("en-2", [0.9, 0.1, 0.0, 0.0], {"lang": "en", "year": 2023, "draft": True}),
    ("de-1", [0.0, 1.0, 0.0, 0.0], {"lang": "de", "year": 2021, "tags": ["b"]}),
    ("fr-1", [0.0, 0.0, 1.0, 0.0], {"lang": "fr", "year": 2024}),
]


def _raw(
    fake: FakePinecone, method: str, path: str, body: Any = None, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One request without the SDK, for what the SDK refuses to send."""
    request = urllib.request.Request(
        fake.control_host + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={} if key is None else {"Api-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# --- control plane ---------------------------------------------------------------------------


def test_control_plane_lifecycle(pc: Pinecone, fake: FakePinecone) -> None:
    created = pc.create_index(name="docs", dimension=8, metric="dotproduct", spec=SPEC)
    assert created.status.ready and created.host == fake.data_host("docs")
    assert created.host.startswith("http://127.0.0.1:")

    described = pc.describe_index("docs")
    assert (described.dimension, described.metric) == (8, "dotproduct")
    assert (described.deployment.cloud, described.deployment.region) == ("aws", "us-east-1")
    assert described.spec.serverless.region == "us-east-1"  # the 9.x-shaped view still works
    assert pc.has_index("docs") and not pc.has_index("other")
    assert [i.name for i in pc.list_indexes()] == ["docs"]

    with pytest.raises(ConflictError) as conflict:
        pc.create_index(name="docs", dimension=8, metric="cosine", spec=SPEC)
    assert conflict.value.status_code == 409
    assert conflict.value.body["error"]["code"] == "ALREADY_EXISTS"

    pc.delete_index("docs")
    assert not pc.has_index("docs") and fake.index_names() == []
    with pytest.raises(NotFoundError):
        pc.describe_index("docs")


def test_http_index_host_gives_no_plaintext_warning(pc: Pinecone) -> None:
    pc.create_index(name="docs", dimension=4, metric="cosine", spec=SPEC)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pc.index(name="docs").close()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


# --- data plane --------------------------------------------------------------------------------


def test_upsert_and_query_nearest_first_with_metadata(index: Index, fake: FakePinecone) -> None:
    assert index.upsert(vectors=DOCS).upserted_count == 4
    result = index.query(vector=[1.0, 0.05, 0.0, 0.0], top_k=3, include_metadata=True)
    assert [m.id for m in result.matches] == ["en-1", "en-2", "de-1"]
    assert result.matches[0].score > result.matches[1].score > result.matches[2].score
    # Numbers come back as floats, as from the service.
    assert result.matches[0].metadata == {"lang": "en", "year": 2020.0, "tags": ["a", "b"]}
    assert result.matches[0].values == []  # not asked for

    with_values = index.query(id="fr-1", top_k=1, include_values=True)
    assert with_values.matches[0].id == "fr-1" and with_values.matches[0].values == [0.0, 0.0, 1.0, 0.0]
    assert with_values.matches[0].metadata is None
    assert fake.vectors("docs")["de-1"] == (
        [0.0, 1.0, 0.0, 0.0],
        {"lang": "de", "year": 2021.0, "tags": ["b"]},
    )


@pytest.mark.parametrize(
    ("metric", "order", "scores"),
    [
        ("cosine", ["a", "b", "c"], [1.0, 0.70710678, 0.0]),
        ("dotproduct", ["b", "a", "c"], [3.0, 1.0, 0.0]),
        ("euclidean", ["a", "c", "b"], [0.0, 2.0, 13.0]),  # squared distance, lower is better
    ],
)
def test_scores_follow_the_index_metric(
    pc: Pinecone, metric: str, order: list[str], scores: list[float]
) -> None:
    idx = _open_index(pc, metric=metric)
    idx.upsert(vectors=[("a", [1.0, 0, 0, 0]), ("b", [3.0, 3.0, 0, 0]), ("c", [0, 0, 1.0, 0])])
    matches = idx.query(vector=[1.0, 0, 0, 0], top_k=3).matches
    assert [m.id for m in matches] == order
    assert [m.score for m in matches] == pytest.approx(scores)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"lang": {"$eq": "en"}}, {"en-1", "en-2"}),
        ({"lang": "de"}, {"de-1"}),  # implicit equality
        ({"lang": {"$in": ["de", "fr"]}}, {"de-1", "fr-1"}),
        ({"$and": [{"lang": {"$eq": "en"}}, {"year": {"$gte": 2021}}]}, {"en-2"}),
        ({"$or": [{"lang": "fr"}, {"draft": True}]}, {"fr-1", "en-2"}),
        ({"lang": {"$ne": "en"}}, {"de-1", "fr-1"}),
        ({"lang": {"$nin": ["en", "de"]}}, {"fr-1"}),
        ({"year": {"$gt": 2020, "$lt": 2024}}, {"en-2", "de-1"}),
        ({"year": {"$lte": 2020}}, {"en-1"}),
        ({"tags": {"$eq": "b"}}, {"en-1", "de-1"}),  # a list field matches on any element
        ({"draft": {"$exists": True}}, {"en-2"}),
    ],
)
def test_query_filters(index: Index, expression: dict[str, Any], expected: set[str]) -> None:
    index.upsert(vectors=DOCS)
    matches = index.query(vector=[1.0, 1.0, 1.0, 1.0], top_k=10, filter=expression).matches
    assert {m.id for m in matches} == expected


def test_invalid_filter_is_a_400(index: Index) -> None:
    index.upsert(vectors=DOCS)
    with pytest.raises(ApiError) as error:
        index.query(vector=[1.0, 0, 0, 0], top_k=1, filter={"year": {"$regex": "20.*"}})
    assert error.value.status_code == 400


def test_namespaces_are_isolated(index: Index, fake: FakePinecone) -> None:
    index.upsert(vectors=[("same", [1.0, 0, 0, 0], {"ns": "one"})], namespace="one")
    index.upsert(
        vectors=[("same", [0, 1.0, 0, 0], {"ns": "two"}), ("only-two", [0, 0, 1.0, 0])], namespace="two"
    )

    one = index.query(vector=[0, 0, 1.0, 0], top_k=10, namespace="one", include_metadata=True)
    assert [(m.id, m.metadata) for m in one.matches] == [("same", {"ns": "one"})]
    assert set(fake.vectors("docs", "two")) == {"same", "only-two"}
    assert fake.vectors("docs") == {}  # nothing went to the default namespace
    assert index.fetch(ids=["only-two"], namespace="one").vectors == {}


def test_fetch_returns_found_ids_only(index: Index) -> None:
    index.upsert(vectors=DOCS, namespace="ns")
    fetched = index.fetch(ids=["en-1", "missing"], namespace="ns")
    assert set(fetched.vectors) == {"en-1"}
    assert fetched.vectors["en-1"].values == [1.0, 0.0, 0.0, 0.0]
    assert fetched.vectors["en-1"].metadata["lang"] == "en"


def test_delete_by_ids_by_filter_and_all(index: Index, fake: FakePinecone) -> None:
    index.upsert(vectors=DOCS)
    index.delete(ids=["fr-1", "not-there"])
    assert set(fake.vectors("docs")) == {"en-1", "en-2", "de-1"}
    index.delete(filter={"lang": {"$eq": "en"}})
    assert set(fake.vectors("docs")) == {"de-1"}

    index.upsert(vectors=DOCS[:2], namespace="other")
    index.delete(delete_all=True)
    assert fake.vectors("docs") == {} and set(fake.vectors("docs", "other")) == {"en-1", "en-2"}


def test_describe_index_stats_counts(index: Index) -> None:
    index.upsert(vectors=DOCS)
    index.upsert(vectors=DOCS[:2], namespace="ns")
    stats = index.describe_index_stats()
    assert (stats.dimension, stats.total_vector_count, stats.metric) == (4, 6, "cosine")
    assert {name: s.vector_count for name, s in stats.namespaces.items()} == {"__default__": 4, "ns": 2}


def test_list_ids_by_prefix_with_pagination(index: Index, fake: FakePinecone) -> None:
    index.upsert(vectors=[(f"doc1#{n}", [1.0, n, 0, 0]) for n in range(5)] + [("doc2#0", [0, 0, 1.0, 0])])
    pages = [[item.id for item in page.vectors] for page in index.list(prefix="doc1#", limit=2)]
    assert pages == [["doc1#0", "doc1#1"], ["doc1#2", "doc1#3"], ["doc1#4"]]
    assert fake.count("/vectors/list", status=200) == 3


def test_concurrent_batched_upserts(index: Index, fake: FakePinecone) -> None:
    # The SDK sends batch_size'd upserts from several threads at once.
    vectors = [(f"c{n:03d}", [1.0, n, 0, 0], {"n": n}) for n in range(240)]
    result = index.upsert(vectors=vectors, batch_size=40, max_concurrency=6, show_progress=False)
    assert result.upserted_count == 240 and not result.has_errors
    assert len(fake.vectors("docs")) == 240
    upserts = [r for r in fake.requests if r.path.endswith("/vectors/upsert")]
    assert len(upserts) == 6 and {r.vectors for r in upserts} == {40}


# --- limits ----------------------------------------------------------------------------------------


def _over_2mb() -> list[tuple[str, list[float], dict[str, str]]]:
    # Many records, each under the metadata limit, together over the request limit.
    text = "x" * 39_000
    count = MAX_UPSERT_REQUEST_BYTES // 39_000 + 2
    return [(f"big-{n}", [1.0, 0, 0, 0], {"text": text}) for n in range(count)]


LIMIT_CASES = {
    "request over 2 MB": _over_2mb,
    "over 1,000 vectors": lambda: [(f"v{n}", [1.0, 0, 0, 0]) for n in range(MAX_VECTORS_PER_UPSERT + 1)],
    "wrong dimension": lambda: [("ok", [1.0, 0, 0, 0]), ("short", [1.0, 0, 0])],
    "metadata over 40 KB": lambda: [("fat", [1.0, 0, 0, 0], {"text": "y" * MAX_METADATA_BYTES_PER_RECORD})],
    "id over 512 chars": lambda: [("i" * (MAX_ID_LENGTH + 1), [1.0, 0, 0, 0])],
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_upsert_limits_give_a_400_and_store_nothing(index: Index, fake: FakePinecone, case: str) -> None:
    vectors = LIMIT_CASES[case]()
    with pytest.raises(PineconeApiException) as error:
        index.upsert(vectors=vectors)
    assert type(error.value) is ApiError and error.value.status_code == 400  # no dedicated subclass
    assert set(error.value.body) == {"code", "message", "details"} and error.value.body["code"] == 3
    assert fake.vectors("docs") == {}  # the whole batch is refused
    (record,) = fake.requests[-1:]
    assert (record.path.endswith("/vectors/upsert"), record.status, record.vectors) == (
        True,
        400,
        len(vectors),
    )
    if case == "request over 2 MB":
        assert record.body_bytes > MAX_UPSERT_REQUEST_BYTES


def test_oversize_status_can_be_413() -> None:
    with FakePinecone(oversize_status=413) as fake:
        client = Pinecone(api_key=fake.api_key, host=fake.control_host)
        with pytest.raises(PayloadTooLargeError):
            _open_index(client).upsert(vectors=_over_2mb())
        client.close()


def test_query_dimension_mismatch_is_a_400(index: Index) -> None:
    index.upsert(vectors=DOCS)
    with pytest.raises(ApiError) as error:
        index.query(vector=[1.0, 0.0], top_k=1)
    assert error.value.status_code == 400 and "dimension" in error.value.message


def test_top_k_over_10000(index: Index, fake: FakePinecone) -> None:
    # The SDK refuses it before sending (PineconeValueError) ...
    with pytest.raises(PineconeValueError):
        index.query(vector=[1.0, 0, 0, 0], top_k=MAX_TOP_K + 1)
    assert fake.count("/query") == 0
    # ... and the fake answers a raw request as the service does.
    status, body = _raw(
        fake,
        "POST",
        "/data-plane/docs/query",
        {"vector": [1.0, 0, 0, 0], "topK": MAX_TOP_K + 1},
        fake.api_key,
    )
    assert status == 400 and body["code"] == 3 and str(MAX_TOP_K) in body["message"]
    assert index.query(vector=[1.0, 0, 0, 0], top_k=MAX_TOP_K).matches == []


# --- auth and faults ---------------------------------------------------------------------------------


def test_wrong_or_missing_key_is_unauthorized(pc: Pinecone, fake: FakePinecone) -> None:
    pc.create_index(name="docs", dimension=4, metric="cosine", spec=SPEC)
    intruder = Pinecone(api_key="wrong-key", host=fake.control_host)
    with pytest.raises(UnauthorizedError) as control:
        intruder.list_indexes()
    assert control.value.status_code == 401 and control.value.body["error"]["code"] == "UNAUTHENTICATED"
    with pytest.raises(UnauthorizedError) as data:
        intruder.index(host=fake.data_host("docs")).query(vector=[1.0, 0, 0, 0], top_k=1)
    assert data.value.status_code == 401 and data.value.body["code"] == 16

    assert _raw(fake, "GET", "/indexes")[0] == 401  # no Api-Key header at all
    assert fake.count("/indexes", status=401) == 2
    assert "wrong-key" not in repr(fake.requests) and fake.api_key not in repr(fake.requests)


def test_injected_500s_are_retried_by_the_sdk(
    index: Index, fake: FakePinecone, no_retry_sleep: list[float]
) -> None:
    fake.fail_next(2, status=500)
    assert index.upsert(vectors=DOCS[:1]).upserted_count == 1  # the SDK retried twice
    assert (fake.count("/vectors/upsert", 500), fake.count("/vectors/upsert", 200)) == (2, 1)
    assert len(no_retry_sleep) == 2

    fake.fail_next(4, status=500)  # more than the SDK's 4 attempts
    with pytest.raises(ServiceError) as error:
        index.query(vector=[1.0, 0, 0, 0], top_k=1)
    assert error.value.status_code == 500 and fake.count("/query", 500) == 4


def test_injected_429_carries_retry_after(
    index: Index, fake: FakePinecone, no_retry_sleep: list[float]
) -> None:
    fake.fail_next(1, status=429)
    assert index.describe_index_stats().total_vector_count == 0  # retried after Retry-After: 0
    fake.fail_next(4, status=429, retry_after=0)
    with pytest.raises(RateLimitError) as error:
        index.describe_index_stats()
    assert error.value.status_code == 429 and error.value.retry_after == 0.0
    assert fake.count("/describe_index_stats", 429) == 5 and no_retry_sleep == [0.0] * 4


def test_faults_only_hit_the_data_plane(
    pc: Pinecone, fake: FakePinecone, no_retry_sleep: list[float]
) -> None:
    fake.fail_next(1, status=503)
    idx = _open_index(pc)  # control-plane requests leave the fault pending
    assert fake.count("/indexes", 503) == 0
    assert idx.describe_index_stats().total_vector_count == 0  # one 503, then a retry
    assert fake.count("/describe_index_stats", 503) == 1 and len(no_retry_sleep) == 1


def test_close_frees_the_port_and_is_idempotent() -> None:
    fake = FakePinecone()
    host = fake.control_host
    fake.close()
    fake.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(host + "/indexes", timeout=2)
