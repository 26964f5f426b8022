"""Vector stores: upsert a document's chunks, drop what an older load left behind, search.

``ChromaStore`` talks to a Chroma server over HTTP when ``chroma_url`` is set
(the local stack and any cluster: every Ray worker reaches the same database), and
otherwise opens an embedded, persistent database in ``chroma_path`` (unit tests,
single-process use). Vectors are always passed in explicitly: Chroma's default
embedding function (which downloads a model) is never used. Embedded writes take a
file lock, because several Ray jobs on one machine may load documents at the same
time and Chroma's SQLite file is not made for concurrent writers; a server
serialises writes itself, so its clients take no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from include.settings import PipelineSettings

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
    score: float  # cosine similarity, 1 = same direction
    text: str
    metadata: Metadata


@dataclass(frozen=True)
class EmbedderInfo:
    """Which embedder made a store's vectors: a query embedded by another one finds noise."""

    name: str
    dimension: int


class EmbedderMismatch(RuntimeError):
    """Vectors of one embedder written to, or searched with, a store made by another."""

    retryable = False  # the same job would fail the same way


# Equality on metadata fields, Chroma's ``where`` syntax (``{"doc_id": "..."}``, ``{"$and": [...]}``).
Filter = dict[str, object]


class VectorStore(Protocol):
    location: str

    def upsert(self, records: list[VectorRecord]) -> None: ...
    def delete_stale(self, source_uri: str, keep_ids: set[str]) -> int: ...
    def count(self, doc_id: str | None = None) -> int: ...
    def query(self, vector: list[float], k: int, where: Filter | None = None) -> list[Hit]: ...
    def scan(self) -> Iterator[tuple[str, str, Metadata]]: ...
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
            self.location = f"{settings.chroma_url.rstrip('/')}#{settings.chroma_collection}"
        else:
            path = settings.resolved_chroma_path
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(path=str(path), settings=client_settings)
            self._lock = FileLock(str(path / ".write.lock"))
            self.location = f"chroma://{path}#{settings.chroma_collection}"
        self._collection = self._client.get_or_create_collection(
            settings.chroma_collection,
            embedding_function=None,
            metadata={"hnsw:space": "cosine"},
        )

    def embedder(self) -> EmbedderInfo | None:
        meta = self._collection.metadata or {}
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

    def delete_stale(self, source_uri: str, keep_ids: set[str]) -> int:
        """Remove this source's vectors that the latest load did not write."""
        with self._lock:
            ids = self._collection.get(where={"source_uri": source_uri}, include=[])["ids"]
            stale = [i for i in ids if i not in keep_ids]
            if stale:
                self._collection.delete(ids=stale)
        return len(stale)

    def count(self, doc_id: str | None = None) -> int:
        if doc_id is None:
            return self._collection.count()
        return len(self._collection.get(where={"doc_id": doc_id}, include=[])["ids"])

    def scan(self, page: int = 500) -> Iterator[tuple[str, str, Metadata]]:
        """Every record's id, text and metadata, a page at a time (the leak audit reads them all)."""
        offset = 0
        while True:
            records = self._collection.get(include=["documents", "metadatas"], limit=page, offset=offset)
            yield from zip(records["ids"], records["documents"], records["metadatas"])
            if len(records["ids"]) < page:
                return
            offset += page

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


def build_vector_store(settings: PipelineSettings) -> VectorStore:
    if settings.vector_store == "chroma":
        return ChromaStore(settings)
    raise ValueError(f"unknown vector store {settings.vector_store!r}")
