"""Vector stores: upsert a document's chunks, drop what an older load left behind, search.

``ChromaStore`` talks to a Chroma server over HTTP when ``chroma_url`` is set
(the local stack and any cluster: every Ray worker reaches the same database), and
otherwise opens an embedded, persistent database in ``chroma_path`` (unit tests,
single-process use). Vectors are always passed in explicitly: Chroma's default
embedding function (which downloads a model) is never used. Embedded writes take a
file lock, because several Ray jobs on one machine may load documents at the same
time and Chroma's SQLite file is not made for concurrent writers; a server
serialises writes itself, so its clients take no lock.

``PineconeStore`` (``vector_store=pinecone``) keeps the same contract on a serverless
Pinecone index: requests within Pinecone's limits, metadata cut to its per-record size.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from include.backends.secrets import PSEUDONYM_KEY, load_worker_secrets
from include.documents import id_prefix, redacted_uri
from include.pii_shapes import redacted
from include.settings import PipelineSettings
from include.storage import object_name

log = logging.getLogger(__name__)

# Metadata travels as scalars: Chroma accepts str, int, float and bool values only.
Metadata = dict[str, str | int | float | bool]


@dataclass
class VectorRecord:
    id: str
    vector: list[float]
    text: str
    metadata: Metadata


@dataclass
class Hit:
    id: str
    score: float  # cosine similarity, 1 = same direction (other searches: their own score)
    text: str
    metadata: Metadata

    @property
    def searchable_text(self) -> str:
        """The passage with its context, for lexical search and rerankers: its heading path (as
        the metadata joins it), then its text."""
        return f"{self.metadata.get('heading') or ''}\n{self.text}"


@dataclass(frozen=True)
class EmbedderInfo:
    """Which embedder made a store's vectors: a query embedded by another one finds noise."""

    name: str
    dimension: int


class EmbedderMismatch(RuntimeError):
    """Vectors of one embedder written to, or searched with, a store made by another."""

    retryable = False  # the same job would fail the same way
    infrastructure = True  # a configuration to fix, not a document's doing


class MissingPseudonymKey(RuntimeError):
    """A source whose name carries PII, and no key on this worker to store it under a pseudonym."""


def stored_source_uri(source_uri: str, settings: PipelineSettings) -> str:
    """The ``source_uri`` a source's vectors carry: the URI itself, or, when its name carries PII
    (``W9_536-22-8471.pdf``), the URI with the PII replaced by its marker and a keyed pseudonym of
    the real one appended: unique per source, so deletes find exactly its vectors, and not
    reversible without ``SOURCE_PSEUDONYM_KEY`` (a plain hash of an SSN-bearing name is: there are
    only 10^9 SSNs). The ledger keeps the real key."""
    shown, spans = redacted_uri(source_uri)
    if not spans:
        return source_uri
    load_worker_secrets(settings)
    key = os.environ.get(PSEUDONYM_KEY)
    if not key:
        raise MissingPseudonymKey(
            f"the name of {shown} carries PII ({', '.join(sorted({s.kind for s in spans}))}): it is stored under a "
            f"pseudonym keyed by {PSEUDONYM_KEY}, which this worker does not have (set it in the workers' "
            "environment or in the Secrets Manager secret)")
    digest = hmac.new(key.encode(), source_uri.encode(), hashlib.sha256).digest()
    # Base32 letters and 2-7: no run of digits that the leak audit could take for a number.
    return f"{shown}#{base64.b32encode(digest[:10]).decode().lower()}"


def stored_document_name(source_uri: str) -> str:
    """The ``document`` a source's vectors carry (what a filter names): its file name, PII redacted."""
    return redacted(object_name(source_uri))[0]


def _stored_forms(source_uri: str, settings: PipelineSettings) -> list[str]:
    """What a source's vectors may carry: its stored form, and the raw URI (loaded before names were redacted)."""
    return sorted({stored_source_uri(source_uri, settings), source_uri})


# Equality on metadata fields, Chroma's ``where`` syntax (``{"doc_id": "..."}``, ``{"$and": [...]}``).
Filter = dict[str, object]


class VectorStore(Protocol):
    location: str

    def upsert(self, records: list[VectorRecord]) -> None: ...
    # Removes the source's vectors but those in ``keep_ids`` and those of the version ``keep_doc_id``.
    def delete_stale(self, source_uri: str, keep_ids: set[str], keep_doc_id: str | None = None) -> int: ...
    def count(self, doc_id: str | None = None) -> int: ...
    # Documents' records as the store holds them, per doc_id: id -> metadata, with the text as "text".
    def documents_records(self, doc_ids: list[str]) -> dict[str, dict[str, Metadata]]: ...
    def query(self, vector: list[float], k: int, where: Filter | None = None) -> list[Hit]: ...
    def scan(self) -> Iterator[tuple[str, str, Metadata]]: ...
    def similarities(self, vector: list[float], ids: list[str]) -> dict[str, float]: ...
    def embedder(self) -> EmbedderInfo | None: ...
    def bind_embedder(self, info: EmbedderInfo) -> None: ...


def check_embedder(store: VectorStore, info: EmbedderInfo) -> None:
    """Fail clearly when ``store`` was made by another embedder than ``info``; fine when it is new."""
    recorded = store.embedder()
    if recorded is not None and recorded != info:
        raise EmbedderMismatch(
            f"{store.location} holds vectors of {recorded.name} ({recorded.dimension} dimensions), not of "
            f"{info.name} ({info.dimension}): use the embedder it was made with, or another collection "
            "(re-ingesting into it with the new embedder)"
        )


class ChromaStore:
    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings
        import chromadb
        from filelock import FileLock

        client_settings = chromadb.Settings(anonymized_telemetry=False)
        self._lock: AbstractContextManager[object]
        if settings.chroma_url:
            url = urlsplit(settings.chroma_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"chroma_url must look like http://host:port, got {settings.chroma_url!r}")
            ssl = url.scheme == "https"
            self._client = chromadb.HttpClient(
                host=url.hostname, port=url.port or (443 if ssl else 80), ssl=ssl, settings=client_settings
            )
            self._lock = nullcontext()
        else:
            path = settings.resolved_chroma_path
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(path=str(path), settings=client_settings)
            self._lock = FileLock(str(path / ".write.lock"))
        self.location = store_location(settings)
        self._collection = self._client.get_or_create_collection(
            settings.chroma_collection,
            embedding_function=None,
            metadata={"hnsw:space": "cosine"},
        )

    def embedder(self) -> EmbedderInfo | None:
        # Read anew: the collection object keeps the metadata of its fetch, and a client kept warm
        # (a load worker, the gates' validator) must see the binding another process made since.
        meta = self._client.get_collection(self._settings.chroma_collection).metadata or {}
        if "embedder" not in meta:
            return None
        return EmbedderInfo(str(meta["embedder"]), int(meta["dimension"]))

    def bind_embedder(self, info: EmbedderInfo) -> None:
        """Record the embedder in the collection's metadata on first write; refuse another one."""
        check_embedder(self, info)
        if self.embedder() is None:
            # Only the user's keys: the distance function, set at creation, cannot be "modified".
            keep = {k: v for k, v in (self._collection.metadata or {}).items() if not k.startswith("hnsw:")}
            with self._lock:
                self._collection.modify(metadata={**keep, "embedder": info.name, "dimension": info.dimension})

    def upsert(self, records: list[VectorRecord]) -> None:
        if not records:
            return
        with self._lock:
            self._collection.upsert(
                ids=[r.id for r in records],
                embeddings=[r.vector for r in records],
                documents=[r.text for r in records],
                metadatas=[r.metadata for r in records],
            )

    def delete_stale(self, source_uri: str, keep_ids: set[str], keep_doc_id: str | None = None) -> int:
        """Remove this source's vectors that the latest load did not write."""
        with self._lock:
            where = {"source_uri": {"$in": _stored_forms(source_uri, self._settings)}}
            ids = self._collection.get(where=where, include=[])["ids"]
            stale = [i for i in ids if i not in keep_ids and not _of_version(i, keep_doc_id)]
            if stale:
                self._collection.delete(ids=stale)
        return len(stale)

    def count(self, doc_id: str | None = None) -> int:
        if doc_id is None:
            return self._collection.count()
        return len(self._collection.get(where={"doc_id": doc_id}, include=[])["ids"])

    def documents_records(self, doc_ids: list[str]) -> dict[str, dict[str, Metadata]]:
        """In one read, by the records' own ``doc_id``."""
        found = self._collection.get(where={"doc_id": {"$in": doc_ids}}, include=["documents", "metadatas"])
        records: dict[str, dict[str, Metadata]] = {doc_id: {} for doc_id in doc_ids}
        for i, text, meta in zip(found["ids"], found["documents"], found["metadatas"]):
            records.setdefault(str((meta or {}).get("doc_id")), {})[i] = {**(meta or {}), "text": text}
        return records

    def scan(self, page: int = 500) -> Iterator[tuple[str, str, Metadata]]:
        """Every record's id, text and metadata, a page at a time (the leak audit reads them all)."""
        offset = 0
        while True:
            records = self._collection.get(include=["documents", "metadatas"], limit=page, offset=offset)
            yield from zip(records["ids"], records["documents"], records["metadatas"])
            if len(records["ids"]) < page:
                return
            offset += page

    def similarities(self, vector: list[float], ids: list[str]) -> dict[str, float]:
        found = self._collection.get(ids=ids, include=["embeddings"])
        return cosine_similarities(vector, dict(zip(found["ids"], found["embeddings"])))

    def query(self, vector: list[float], k: int, where: Filter | None = None) -> list[Hit]:
        result = self._collection.query(
            query_embeddings=[vector], n_results=k, where=where or None,
            include=["documents", "metadatas", "distances"],
        )
        return [
            Hit(id=i, score=1.0 - d, text=t, metadata=m)
            for i, t, m, d in zip(
                result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]
            )
        ]


def _of_version(vector_id: str, doc_id: str | None) -> bool:
    """Is the vector one of that version's (ids are ``<doc_id>#<chunk>``)?"""
    return doc_id is not None and vector_id.startswith(f"{doc_id}#")


def cosine_similarities(vector: list[float], stored: dict[str, list[float]]) -> dict[str, float]:
    """Cosine similarity of ``vector`` to each stored vector, by id."""
    if not stored:
        return {}
    ids = list(stored)
    matrix = np.asarray([stored[i] for i in ids], dtype=np.float32)
    query = np.asarray(vector, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
    return dict(zip(ids, (matrix @ query / np.where(norms == 0, 1, norms)).tolist()))


# Pinecone's limits (docs.pinecone.io, "Database limits"): a little under each, since the SDK's
# encoding of a request is not ours byte for byte.
PINECONE_MAX_UPSERT_BYTES = 2 * 1024 * 1024 * 9 // 10
PINECONE_MAX_UPSERT_VECTORS = 1000
PINECONE_MAX_METADATA_BYTES = 40 * 1024 - 512
PINECONE_MAX_IDS_PER_CALL = 1000  # fetch and delete by ids
# Fields cut, in this order, when a record's metadata is over the limit: the longest first.
PINECONE_TRIMMABLE = ("text", "entities", "key_phrases", "heading")


def _json_bytes(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def fit_metadata(metadata: Metadata, limit: int = PINECONE_MAX_METADATA_BYTES) -> tuple[Metadata, list[str]]:
    """``metadata`` within Pinecone's per-record limit: long fields cut (the fields named in
    ``trimmed``), so a record is never refused for its size."""
    metadata, trimmed = dict(metadata), []
    for name in PINECONE_TRIMMABLE:
        excess = _json_bytes(metadata) - limit
        if excess <= 0:
            break
        value = metadata.get(name)
        if not isinstance(value, str) or not value:
            continue
        keep = max(0, len(value.encode("utf-8")) - excess - 64)
        metadata[name] = value.encode("utf-8")[:keep].decode("utf-8", errors="ignore")
        trimmed.append(name)
    if trimmed:
        metadata["trimmed"] = ",".join(trimmed)
    return metadata, trimmed


def upsert_batches(records: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    """Consecutive runs of records that each make an upsert request within Pinecone's limits."""
    batches: list[list[dict[str, object]]] = []
    size = 0
    for record in records:
        record_bytes = _json_bytes(record) + 1
        if not batches or len(batches[-1]) >= PINECONE_MAX_UPSERT_VECTORS or size + record_bytes > PINECONE_MAX_UPSERT_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(record)
        size += record_bytes
    return batches


class PineconeStore:
    """A serverless Pinecone index, one namespace of it.

    The index is created on the first write, with the embedder's dimension, the cosine metric
    and the embedder's name as a tag; a store made by another embedder is refused. The chunk's
    text travels in the metadata (``text``): Pinecone has no separate document field. The API
    key comes from ``PINECONE_API_KEY`` on the worker; the SDK retries 429 and 5xx answers.
    """

    def __init__(self, settings: PipelineSettings) -> None:
        from pinecone import Pinecone

        from include.backends.secrets import load_worker_secrets

        load_worker_secrets(settings)
        self._pinecone = Pinecone(host=settings.pinecone_host) if settings.pinecone_host else Pinecone()
        self._settings = settings
        self._name = settings.pinecone_index
        self._namespace = settings.pinecone_namespace
        self._index: Any = None
        self.location = store_location(settings)

    def _open(self) -> Any:
        if self._index is None and self._pinecone.has_index(self._name):
            self._index = self._pinecone.Index(name=self._name)
        return self._index

    def embedder(self) -> EmbedderInfo | None:
        if not self._pinecone.has_index(self._name):
            return None
        description = self._pinecone.describe_index(self._name)
        tags = description.tags or {}
        # An index made elsewhere has no tag: it is known by its dimension only.
        return EmbedderInfo(tags.get("embedder", "?"), int(description.dimension))

    def bind_embedder(self, info: EmbedderInfo) -> None:
        recorded = self.embedder()
        if recorded is None:
            from pinecone import ServerlessSpec

            self._pinecone.create_index(
                name=self._name, dimension=info.dimension, metric="cosine", tags={"embedder": info.name},
                spec=ServerlessSpec(cloud=self._settings.pinecone_cloud, region=self._settings.pinecone_region),
            )
            log.info("created Pinecone index %s (%d dimensions, cosine) for %s", self._name, info.dimension, info.name)
            return
        check_embedder(self, info if recorded.name != "?" else EmbedderInfo("?", info.dimension))

    def upsert(self, records: list[VectorRecord]) -> None:
        index = self._open()
        if index is None:
            raise RuntimeError(f"{self.location}: no index yet (bind_embedder creates it)")
        rows = []
        for record in records:
            metadata, trimmed = fit_metadata({**record.metadata, "text": record.text})
            if trimmed:
                log.warning("%s: metadata over Pinecone's 40 KB per record: cut %s", record.id, ", ".join(trimmed))
            rows.append({"id": record.id, "values": record.vector, "metadata": metadata})
        for batch in upsert_batches(rows):
            index.upsert(vectors=batch, namespace=self._namespace)

    def _ids(self, prefix: str) -> list[str]:
        index = self._open()
        if index is None:
            return []
        return [item.id for page in index.list(prefix=prefix, namespace=self._namespace) for item in page.vectors]

    def _fetch(self, ids: list[str]) -> Iterator[tuple[str, Metadata, list[float]]]:
        index = self._open()
        for start in range(0, len(ids), PINECONE_MAX_IDS_PER_CALL):
            found = index.fetch(ids=ids[start : start + PINECONE_MAX_IDS_PER_CALL], namespace=self._namespace)
            for vector_id, vector in found.vectors.items():
                yield vector_id, dict(vector.metadata or {}), list(vector.values)

    def delete_stale(self, source_uri: str, keep_ids: set[str], keep_doc_id: str | None = None) -> int:
        """Remove this source's vectors that the latest load did not write (ids share a prefix
        per source name; the metadata says which source each one is)."""
        forms = _stored_forms(source_uri, self._settings)
        prefixes = {id_prefix(source_uri), id_prefix(source_uri, redact=False)}  # ids made before names were redacted
        candidates = [i for prefix in sorted(prefixes) for i in self._ids(prefix)
                      if i not in keep_ids and not _of_version(i, keep_doc_id)]
        stale = [i for i, meta, _ in self._fetch(sorted(set(candidates))) if meta.get("source_uri") in forms]
        for start in range(0, len(stale), PINECONE_MAX_IDS_PER_CALL):
            self._open().delete(ids=stale[start : start + PINECONE_MAX_IDS_PER_CALL], namespace=self._namespace)
        return len(stale)

    def count(self, doc_id: str | None = None) -> int:
        return len(self._ids(f"{doc_id}#" if doc_id else ""))

    def documents_records(self, doc_ids: list[str]) -> dict[str, dict[str, Metadata]]:
        """Each document's ids listed by their prefix, then fetched together; by the ids' document."""
        records: dict[str, dict[str, Metadata]] = {doc_id: {} for doc_id in doc_ids}
        ids = [vector_id for doc_id in doc_ids for vector_id in self._ids(f"{doc_id}#")]
        for vector_id, metadata, _ in self._fetch(ids):
            records[vector_id.rsplit("#", 1)[0]][vector_id] = metadata
        return records

    def scan(self) -> Iterator[tuple[str, str, Metadata]]:
        for vector_id, metadata, _ in self._fetch(self._ids("")):
            yield vector_id, str(metadata.pop("text", "")), metadata

    def similarities(self, vector: list[float], ids: list[str]) -> dict[str, float]:
        return cosine_similarities(vector, {vector_id: values for vector_id, _, values in self._fetch(ids)})

    def query(self, vector: list[float], k: int, where: Filter | None = None) -> list[Hit]:
        index = self._open()
        if index is None:
            return []
        found = index.query(vector=vector, top_k=k, filter=where or None, include_metadata=True,
                            namespace=self._namespace)
        hits = []
        for match in found.matches:
            metadata = dict(match.metadata or {})
            hits.append(Hit(id=match.id, score=float(match.score), text=str(metadata.pop("text", "")),
                            metadata=metadata))
        return hits


def store_location(settings: PipelineSettings) -> str:
    """Where the settings' store is, as outputs and messages name it (no client needed)."""
    if settings.vector_store == "chroma":
        where = settings.chroma_url.rstrip("/") if settings.chroma_url else f"chroma://{settings.resolved_chroma_path}"
        return f"{where}#{settings.chroma_collection}"
    if settings.vector_store == "pinecone":
        return f"pinecone://{settings.pinecone_index}/{settings.pinecone_namespace}"
    raise ValueError(f"unknown vector store {settings.vector_store!r}")


def build_vector_store(settings: PipelineSettings) -> VectorStore:
    if settings.vector_store == "chroma":
        return ChromaStore(settings)
    if settings.vector_store == "pinecone":
        return PineconeStore(settings)
    raise ValueError(f"unknown vector store {settings.vector_store!r}")


@lru_cache(maxsize=1)
def process_vector_store(settings: PipelineSettings) -> VectorStore:
    """This process's one client of the store: a load worker's writes and a job driver's reads
    (the gates, load's clean-up) share it, so a process opens one connection, not one per use."""
    return build_vector_store(settings)
