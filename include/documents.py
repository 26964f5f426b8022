"""Document identity and discovery of the documents waiting in the inbox.

A document's id is ``<readable stem>-<12 hex>`` where the hex digits are the start
of ``sha256(source URI + NUL + sha256(content))``. So the id is stable (same object,
same bytes -> same id, on every run and retry), changes when the bytes change (a
replaced file is a new version, never mixed with the old one's chunks), and differs
for the same bytes under two keys (each key is its own document).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict

from include.storage import Storage, join_uri

log = logging.getLogger(__name__)

_STEM_CHARS = re.compile(r"[^a-z0-9]+")


class DocumentRef(BaseModel):
    """What the pipeline knows of a source document before reading it."""

    model_config = ConfigDict(frozen=True)

    doc_id: str
    source_uri: str
    content_sha256: str
    size_bytes: int

    @property
    def name(self) -> str:
        return PurePosixPath(self.source_uri).name


def document_id(source_uri: str, content_sha256: str) -> str:
    stem = _STEM_CHARS.sub("-", PurePosixPath(source_uri).stem.lower()).strip("-")[:40]
    digest = hashlib.sha256(f"{source_uri}\0{content_sha256}".encode()).hexdigest()[:12]
    return f"{stem or 'document'}-{digest}"


def describe(storage: Storage, source_uri: str) -> DocumentRef:
    sha, size = storage.sha256(source_uri)
    return DocumentRef(
        doc_id=document_id(source_uri, sha),
        source_uri=source_uri,
        content_sha256=sha,
        size_bytes=size,
    )


def key_uris(inbox_uri: str, keys: list[str]) -> list[str]:
    """Keys relative to the inbox, or full URIs, as full URIs."""
    return [key if "://" in key else join_uri(inbox_uri, key) for key in keys]


def discover(storage: Storage, inbox_uri: str, keys: list[str] | None = None) -> list[DocumentRef]:
    """The documents to ingest: every object under the inbox, or just ``keys``.

    ``keys`` are full ``s3://``/``file://`` URIs or paths relative to the inbox.
    Every object counts, not only ``*.pdf``: a stray non-PDF is reported as a
    failed document by the extract stage instead of being silently ignored.
    """
    if keys:
        uris = key_uris(inbox_uri, keys)
    else:
        uris = storage.list(inbox_uri)
    documents = [describe(storage, uri) for uri in uris]
    log.info("Discovered %d document(s) under %s", len(documents), inbox_uri)
    return documents
