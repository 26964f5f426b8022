"""What each stage's output must hold before the next stage takes it: one GX suite per stage.

Every suite reads one document's output, in the stage's job, before its outputs are recorded
(``include.quality.gates``); the documents a job finishes about the same time are validated in one
frame, each row naming its document, and a document that fails fails alone, named with the failed
expectation and what was observed on its own rows. The frames hold derived, safe columns only (sizes, counts,
ids, digests, the *kind* of a PII shape found), never a chunk's text: a result shows its
unexpected values, and it is kept among the run's artifacts and rendered in its Data Docs.

- **chunk**: text that is not blank; tokens within the embedder's window (the chunker's own
  count, the one it kept to); unique chunk ids; page spans inside the document, end not before
  start (what is wrong named in one column); more than 0 and at most ``max_chunks_per_page``
  chunks per page (the document's chunks per page is a column: a bound per document).
- **enrich**: no email, phone, SSN or card shape left in the text, heading, entities or key
  phrases (``include.pii_shapes``: the leak audit's rules); entities and key phrases matching
  their JSON schemas (what failed is named, not the value).
- **embed**: every vector of the store's dimension (of the document's first vector's, until the
  store has one), finite, of unit length (every embedder here normalizes), and no two distinct
  texts with the same vector (an embedder that lost its input gives one vector to everything).
- **load**: the store holds exactly the chunk ids this load wrote for the document, each with the
  metadata the retriever reads (what is wrong with a record named in one column: GX's cost is per
  expectation).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

from include.pii_shapes import find_pii
from include.quality.expectations import Checks, expect
from include.settings import PipelineSettings

# What the retriever and the filters read of a stored vector (``include.retrieval``), besides its text.
RETRIEVED_METADATA = ("doc_id", "source_uri", "document", "page_start", "page_end")

_ENTITIES_SCHEMA = {
    "type": "object",
    "properties": {group: {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
                   for group in ("people", "organizations", "medications")},
    "required": ["people", "organizations", "medications"],
    "additionalProperties": False,
}


def chunk_checks(rows: list[dict[str, Any]], *, doc_id: str, token_limit: int, pages: int,
                 settings: PipelineSettings) -> Checks:
    """What bounds a chunk by its document (its pages, how many chunks it may have) is in its row, so
    the documents of a job are validated together. Single-column expectations only: GX takes about
    17 ms for a column-pair one against 5 for a single column, whatever the rows, and a two-page
    document's chunking takes about 15 ms; so a page span's faults are named in one column. A
    document with no chunk is one row with none: it fails the chunk count, and nothing else."""
    size = max(len(rows), 1)
    columns = {
        "chunk_id": [row["chunk_id"] for row in rows] or [None],
        "doc_id": [doc_id] * size,
        "text_characters": [len(row["text"].strip()) for row in rows] or [None],
        "tokens": [row["tokens"] for row in rows] or [None],
        "page_span_problem": [_page_span_problem(row["page_start"], row["page_end"], pages)
                              for row in rows] or [None],
        "chunks_per_page": [len(rows) / pages if pages > 0 else math.inf] * size,
    }
    return Checks("chunk", columns, [
        expect("ExpectColumnValuesToBeBetween", column="text_characters", min_value=1),
        expect("ExpectColumnValuesToBeBetween", column="tokens", min_value=1, max_value=token_limit),
        expect("ExpectColumnValuesToBeUnique", column="chunk_id"),
        expect("ExpectColumnValuesToBeNull", column="page_span_problem"),
        expect("ExpectColumnValuesToBeBetween", column="chunks_per_page", min_value=0, strict_min=True,
               max_value=settings.quality.max_chunks_per_page),
    ])


def _page_span_problem(start: int, end: int, pages: int) -> str | None:
    """What is wrong with a chunk's page span in a document of ``pages`` pages, or None."""
    problems = [f"starts at page {start}"] if start < 1 else []
    if end < start:
        problems.append(f"ends at page {end}, before it starts")
    if end > pages:
        problems.append(f"ends at page {end} of {pages}")
    return ", ".join(problems) or None


def enrich_checks(rows: list[dict[str, Any]], *, doc_id: str, settings: PipelineSettings) -> Checks:
    key_phrases = _validator({"type": "array", "items": {"type": "string", "minLength": 1},
                              "maxItems": settings.key_phrases_per_chunk})
    columns = {
        "chunk_id": [row["chunk_id"] for row in rows],
        "doc_id": [doc_id] * len(rows),
        "pii_shape_left": [_pii_kinds(row) for row in rows],
        "entities_not_matching_schema": [_schema_error(_validator(_ENTITIES_SCHEMA), row["entities"]) for row in rows],
        "key_phrases_not_matching_schema": [_schema_error(key_phrases, row["key_phrases"]) for row in rows],
    }
    return Checks("enrich", columns, [
        expect("ExpectColumnValuesToBeNull", column="pii_shape_left"),
        expect("ExpectColumnValuesToBeNull", column="entities_not_matching_schema"),
        expect("ExpectColumnValuesToBeNull", column="key_phrases_not_matching_schema"),
    ])


@lru_cache(maxsize=8)
def _compiled(schema: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema))


def _validator(schema: dict[str, Any]) -> Any:
    """The JSON schema compiled once: GX's own ``expect_column_values_to_match_json_schema`` compiles it
    again for every row (1.6 ms a row: most of the enrich gate's time)."""
    return _compiled(json.dumps(schema, sort_keys=True))


def _schema_error(validator: Any, value: Any) -> str | None:
    """Why ``value`` does not match the schema (its first error, with where), or None."""
    error = next(iter(validator.iter_errors(value)), None)
    return None if error is None else f"{'/'.join(map(str, error.absolute_path)) or 'value'}: {error.message}"


# Between a chunk's fields, read as one text: no shape spans it (each needs digits, or an "@", on both sides).
_FIELD_BREAK = "\n§\n"


def _pii_kinds(row: dict[str, Any]) -> str | None:
    """The kinds of PII shape left in what goes downstream of a chunk (as the leak audit reads it),
    or None. The fields are read as one text: one pass of the shape rules, not four."""
    fields = (row["text"], row.get("heading") or "", json.dumps(row["entities"]), json.dumps(row["key_phrases"]))
    kinds = sorted({span.kind for span in find_pii(_FIELD_BREAK.join(fields))})
    return ",".join(kinds) or None


def embed_checks(rows: list[dict[str, Any]], *, doc_id: str, dimension: int | None,
                 settings: PipelineSettings) -> Checks:
    """``dimension``: the store's; None when it has none yet: then every vector has the document's first's."""
    tolerance = settings.quality.norm_tolerance
    vectors = [np.asarray(row["vector"], dtype=np.float32) for row in rows]
    columns = {
        "chunk_id": [row["chunk_id"] for row in rows],
        "doc_id": [doc_id] * len(rows),
        "dimension": [len(vector) for vector in vectors],
        "non_finite_values": [int(np.count_nonzero(~np.isfinite(vector))) for vector in vectors],
        "norm": [float(np.linalg.norm(vector)) for vector in vectors],
        "vector_digest": list(_digests_of_distinct_texts(doc_id, rows, vectors)),
    }
    dimension = dimension or (columns["dimension"][0] if rows else 0)
    return Checks("embed", columns, [
        expect("ExpectColumnValuesToBeBetween", column="dimension", min_value=dimension,
               max_value=dimension),
        expect("ExpectColumnValuesToBeBetween", column="non_finite_values", max_value=0),
        # A vector with a NaN has no length: it is the check above that fails it.
        expect("ExpectColumnValuesToBeBetween", column="norm", min_value=1 - tolerance,
               max_value=1 + tolerance),
        expect("ExpectColumnValuesToBeUnique", column="vector_digest"),
    ])


def _digests_of_distinct_texts(doc_id: str, rows: list[dict[str, Any]],
                               vectors: list[np.ndarray]) -> Iterable[str | None]:
    """Each vector's digest within its document, or None where the same text came before with the
    same vector (a text repeated in a document embeds the same: that is no collision). GX skips the
    Nones, so two digests alike are two distinct texts of one document given one vector. The
    document is part of the digest: documents validated together may share a text (a form's
    boilerplate), and with it a vector."""
    seen: set[tuple[str, str]] = set()
    for row, vector in zip(rows, vectors):
        digest = hashlib.sha256(doc_id.encode() + vector.tobytes()).hexdigest()[:16]
        text = hashlib.sha256(row["text"].encode()).hexdigest()
        yield None if (text, digest) in seen else digest
        seen.add((text, digest))


def load_checks(stored: dict[str, dict[str, Any]], *, written: set[str], doc_id: str) -> Checks:
    """``stored``: the store's records of the document (id -> metadata, its text as ``text``),
    read back after the load; ``written``: the ids the load wrote. One column names what is wrong
    with each id's record, missing or one too many included: GX costs about 5 ms an expectation
    whatever its rows, and the read-back is most of this gate already."""
    ids = sorted(written | set(stored))
    columns = {
        "chunk_id": ids,
        "doc_id": [doc_id] * len(ids),
        "record_problem": [_record_problem(stored.get(i), i in written, doc_id) for i in ids],
    }
    return Checks("load", columns, [expect("ExpectColumnValuesToBeNull", column="record_problem")])


def _record_problem(record: dict[str, Any] | None, written: bool, doc_id: str) -> str | None:
    if record is None:
        return "not in the store"
    if not written:
        return "in the store, not written by this load"
    return _metadata_problem(record, doc_id)


def _metadata_problem(record: dict[str, Any], doc_id: str) -> str | None:
    """What the retriever would miss in a stored record: absent fields, another document's id, no text,
    a page span backwards; None when it has all it reads."""
    problems = [f"no {name}" for name in RETRIEVED_METADATA if record.get(name) in (None, "")]
    if not str(record.get("text") or "").strip():
        problems.append("no text")
    if record.get("doc_id") not in (None, "", doc_id):
        problems.append(f"doc_id {record['doc_id']}")
    start, end = record.get("page_start"), record.get("page_end")
    if isinstance(start, int) and isinstance(end, int) and end < start:
        problems.append(f"pages {start}-{end}")
    return ", ".join(problems) or None
