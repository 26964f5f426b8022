"""The ledger's tables. The schema is owned by the Alembic migrations beside this module:
a change here goes with a new revision under ``migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Status(StrEnum):
    PROCESSING = "processing"  # claimed by a run that is working on it
    INGESTED = "ingested"  # its vectors are in the store, under the recorded fingerprint
    FAILED = "failed"  # a job failed on it; the next run tries again, up to max_attempts
    POSTPONED = "postponed"  # its run's budget for paid calls ran out before it: the next run takes it
    QUARANTINED = "quarantined"  # the file is bad: moved out of the inbox, with a note
    DELETED = "deleted"  # gone from the inbox: its vectors were removed


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Document(Base):
    """One object of the inbox, as the pipeline last saw and handled it.

    One row per source URI: the same bytes under two keys are two documents, and a
    replaced file is a new version of the same row (``doc_id`` and ``content_sha256``
    change; the events keep the history).
    """

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_uri: Mapped[str] = mapped_column(String(2048), unique=True)
    doc_id: Mapped[str] = mapped_column(String(128))
    # None until the extract job of its first run has read it.
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # S3's ETag (or a file's mtime and size) when last seen: unchanged means no need to hash.
    object_version: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), index=True)
    # The fingerprint the current version was (or is being) processed under.
    pipeline_fingerprint: Mapped[str] = mapped_column(String(256))
    stage_reached: Mapped[str | None] = mapped_column(String(16))
    pages: Mapped[int | None] = mapped_column(Integer)
    chunks: Mapped[int | None] = mapped_column(Integer)
    vectors: Mapped[int | None] = mapped_column(Integer)
    # The version whose vectors are in the store: an older one until a new version's load succeeds.
    indexed_doc_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    error_stage: Mapped[str | None] = mapped_column(String(16))
    # Why it failed (``DocumentOutcome.cause``; "infrastructure" when its stage's job failed).
    error_cause: Mapped[str | None] = mapped_column(String(16), index=True)
    quarantine_uri: Mapped[str | None] = mapped_column(String(2048))
    # Runs that tried the current version (reset when the version changes).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_dag_id: Mapped[str | None] = mapped_column(String(250))
    claim_run_id: Mapped[str | None] = mapped_column(String(250))
    claimed_at: Mapped[datetime | None]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    last_run_id: Mapped[str | None] = mapped_column(String(250))
    updated_at: Mapped[datetime]


class Event(Base):
    """Append-only history: what happened to which version of a document, in which run and stage."""

    __tablename__ = "document_events"
    __table_args__ = (
        # A retried task records its stage's outcome again: the second record is dropped.
        UniqueConstraint("run_id", "doc_id", "stage", "event", name="uq_event_once_per_run"),
        Index("ix_events_source_uri_at", "source_uri", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    source_uri: Mapped[str] = mapped_column(String(2048))
    doc_id: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(250))
    stage: Mapped[str] = mapped_column(String(16))  # a stage, or plan / finish / prune
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict | None] = mapped_column(JSON)


class Run(Base):
    """One DAG run's totals: what it found, what it did, what it cost in time."""

    __tablename__ = "runs"

    # Run ids are unique within a DAG only.
    dag_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    planned_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    new: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    stale: Mapped[int] = mapped_column(Integer, default=0)
    retried: Mapped[int] = mapped_column(Integer, default=0)
    reprocessed: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    ingested: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    vectors: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[dict | None] = mapped_column(JSON)  # per stage
    report_uri: Mapped[str | None] = mapped_column(String(2048))
