"""Document identity and discovery of the documents waiting in the inbox.

A document's id is ``<readable stem>-<12 hex>`` where the hex digits are the start
of ``sha256(source URI + NUL + version tag)``, the tag being what the listing gives (S3's
ETag, a local file's mtime and size). So planning names a document without reading it;
the id is stable (same object, same version -> same id, on every run and retry), changes
when the bytes change (a replaced file is a new version, never mixed with the old one's
chunks), and differs for the same bytes under two keys (each key is its own document).

The content hash is taken once, by the first stage's job (``hashed``): it tells a file
copied over itself (a new tag, the same bytes: unchanged) from a real change.

The readable stem leaves out whatever in the name looks like PII (``include.pii_shapes``), so
an id never carries it into the vector store: ``W9_536-22-8471.pdf`` is ``w9-redacted-<hex>``.

The source URI is the one ``Storage.list`` returns (see ``include.storage`` for the rule), so
any key, whatever its characters (``#``, ``?``, ``%``, spaces, non-ASCII), is exactly one document.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from pathlib import PurePosixPath

from pydantic import BaseModel

from include.contract import DocumentRef
from include.pii_shapes import Span, redacted
from include.storage import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    canonical_uri,
    join_uri,
    object_name,
    uri_scheme,
)

log = logging.getLogger(__name__)

_STEM_CHARS = re.compile(r"[^a-z0-9]+")
_MARKER = re.compile(r"\[REDACTED:[A-Z_]+\]")


def _readable_stem(source_uri: str, redact: bool = True) -> str:
    # A name that carries PII (``W9_536-22-8471.pdf``) keeps only its markers: ids reach the store.
    name = object_name(source_uri)
    if redact:
        name = _MARKER.sub("redacted", redacted(name)[0])
    stem = PurePosixPath(name).stem.lower()
    # NFKD splits "é" into "e" + a combining accent; dropping the marks keeps "résumé" readable
    # as "resume" where the ASCII rule alone would leave "r-sum". ASCII stems are unchanged by it.
    stem = "".join(char for char in unicodedata.normalize("NFKD", stem) if not unicodedata.combining(char))
    return _STEM_CHARS.sub("-", stem).strip("-")[:40]


def redacted_uri(uri: str) -> tuple[str, list[Span]]:
    """The URI with whatever looks like PII in its folders or in its (decoded) name replaced by markers,
    for showing where the key itself may be personal data; and what was found."""
    folder, name = redacted(uri.rsplit("/", 1)[0]), redacted(object_name(uri))
    return f"{folder[0]}/{name[0]}", folder[1] + name[1]


def id_prefix(source_uri: str, redact: bool = True) -> str:
    """What every id of this source's versions starts with (other sources' ids may too); unredacted:
    what ids made before names were redacted started with."""
    return f"{_readable_stem(source_uri, redact) or 'document'}-"


def document_id(source_uri: str, version: str) -> str:
    digest = hashlib.sha256(f"{source_uri}\0{version}".encode()).hexdigest()[:12]
    return f"{id_prefix(source_uri)}{digest}"


def planned(info: ObjectInfo) -> DocumentRef:
    """The document version a listed object is, from the listing alone."""
    return DocumentRef(doc_id=document_id(info.uri, info.version), source_uri=info.uri, size_bytes=info.size,
                       object_version=info.version)


def describe(storage: Storage, source_uri: str) -> DocumentRef:
    """The document an object is, from its metadata; ``ObjectNotFound`` if there is none."""
    # However the caller spelled the URI, the id is made from the spelling ``list`` gives.
    return planned(storage.stat(canonical_uri(source_uri)))


class ReplacedSinceListed(Exception):
    """The object under the document's key is another version than the one planned."""


def hashed(storage: Storage, document: DocumentRef) -> DocumentRef:
    """The document with its content hash and the size actually read (streamed, never held whole);
    ``ObjectNotFound`` if it vanished since it was listed, ``ReplacedSinceListed`` if its key now
    holds another version (the next run plans that one)."""
    current = storage.stat(document.source_uri).version
    if document.object_version is not None and current != document.object_version:
        raise ReplacedSinceListed(f"{document.source_uri}: the file changed after it was listed (version "
                                  f"{current}, planned {document.object_version}); the next run ingests it")
    sha, size = storage.sha256(document.source_uri)
    return document.model_copy(update={"content_sha256": sha, "size_bytes": size})


def key_uris(inbox_uri: str, keys: list[str]) -> list[str]:
    """Keys relative to the inbox (raw, any characters) or full URIs, as the URIs ``list`` gives;
    ``ValueError`` for a URI outside the inbox: a run takes nothing else.

    Only a leading ``<scheme>://`` makes a full URI: a relative key may hold ``://`` further on.
    """
    uris = [canonical_uri(key if uri_scheme(key) else join_uri(inbox_uri, key)) for key in keys]
    inbox = canonical_uri(inbox_uri).rstrip("/") + "/"
    if outside := [uri for uri in uris if not uri.startswith(inbox)]:
        raise ValueError(f"{', '.join(outside)}: not under the inbox {inbox}; name keys of the inbox (relative to it, "
                         "or full URIs under it)")
    return uris


class Unreadable(BaseModel):
    """An object that was named but is not there (a key given to the run that does not exist)."""

    source_uri: str
    error: str


def listed(storage: Storage, inbox_uri: str, keys: list[str] | None = None) -> tuple[list[ObjectInfo], list[Unreadable]]:
    """Every object under the inbox, or just ``keys`` (full ``s3://``/``file://`` URIs or paths
    relative to the inbox); a named object that is not there is set apart with the reason."""
    if not keys:
        return storage.list_objects(inbox_uri), []
    found, missing = [], []
    for uri in key_uris(inbox_uri, keys):
        try:
            found.append(storage.stat(uri))
        except ObjectNotFound as exc:
            missing.append(Unreadable(source_uri=uri, error=f"{uri}: no such object ({exc})"))
    return found, missing


def discover(
    storage: Storage, inbox_uri: str, keys: list[str] | None = None
) -> tuple[list[DocumentRef], list[Unreadable]]:
    """The documents to ingest: every object under the inbox, or just ``keys`` (see ``listed``).

    Every object counts, not only ``*.pdf``: a stray non-PDF is reported as a failed
    document by the extract stage instead of being silently ignored. Reads metadata only.
    """
    infos, unreadable = listed(storage, inbox_uri, keys)
    documents = [planned(info) for info in infos]
    log.info("Discovered %d document(s) under %s", len(documents), inbox_uri)
    return documents, unreadable
