"""Reads and writes of the ledger. Only the orchestration side calls these: stage code never does.

Every write is one short transaction. On SQLite, a transaction takes the write lock as it
begins (``BEGIN IMMEDIATE``), so concurrent tasks queue for it instead of failing on a
lock upgrade; claims are compare-and-set updates, correct on PostgreSQL as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, create_engine, delete, event, func, make_url, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from include.contract import DocumentRef
from include.control.ledger.schema import Document, Event, Run, Status
from include.control.settings import ControlSettings

log = logging.getLogger(__name__)

LEDGER_CONN_ID = "pipeline_ledger"
MIGRATIONS = Path(__file__).with_name("migrations")
# The event of a version whose unredacted artifacts a prune job removed (``unredacted_due``).
EXPIRED = "expired"
# PostgreSQL: one migrator at a time (any constant key shared by every process).
_MIGRATION_LOCK_KEY = 0x1ED6E2


def now() -> datetime:
    return datetime.now(UTC)


class Entry(BaseModel):
    """A document row as read: a plain value, safe to keep after the session closes."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    source_uri: str
    doc_id: str
    content_sha256: str | None
    size_bytes: int
    object_version: str | None
    status: Status
    pipeline_fingerprint: str
    stage_reached: str | None
    pages: int | None
    chunks: int | None
    vectors: int | None
    indexed_doc_id: str | None
    error: str | None
    error_stage: str | None
    error_cause: str | None = None
    quarantine_uri: str | None
    attempts: int
    claim_dag_id: str | None
    claim_run_id: str | None
    claimed_at: datetime | None
    first_seen: datetime
    last_seen: datetime
    last_run_id: str | None


class EventEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    at: datetime
    source_uri: str
    doc_id: str
    run_id: str
    stage: str
    event: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class Final:
    """How a run left one document: the version it processed (hashed by the extract job, when that
    ran) and what became of it. ``unchanged``: that version holds the bytes already ingested."""

    document: DocumentRef
    status: Status
    stage_reached: str | None = None
    error: str | None = None
    error_stage: str | None = None
    error_cause: str | None = None
    quarantine_uri: str | None = None
    unchanged: bool = False
    # False when the run failed the document through no fault of its own (its stage's job failed).
    counts_attempt: bool = True
    # Pages, chunks, vectors of this version, as far as its stages got.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def source_uri(self) -> str:
        return self.document.source_uri


def default_url(settings: ControlSettings) -> str:
    """The ledger's URL: the setting, else the Airflow connection, else SQLite in the work dir."""
    if settings.ledger_url:
        url = settings.ledger_url.get_secret_value()
        _mask_in_airflow(url)
        return url
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # plain Python (the CLI on a machine without Airflow)
        pass
    else:
        try:
            return sqlalchemy_url(BaseHook.get_connection(LEDGER_CONN_ID).get_uri())
        except AirflowNotFoundException:
            pass
    return f"sqlite:///{settings.work_dir / 'ledger.sqlite'}"


def _mask_in_airflow(url: str) -> None:
    """Inside Airflow, the URL and its password are masked in every log line and rendered field, as
    the password of the connection ``pipeline_ledger`` would be."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # plain Python: nothing logs the URL but ``location``, without its password
        return
    mask_secret(url)
    mask_secret(make_url(url).password)


def sqlalchemy_url(connection_uri: str) -> str:
    """An Airflow connection URI as SQLAlchemy spells it (``postgres://`` -> the pg8000 driver)."""
    scheme, _, rest = connection_uri.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+pg8000://{rest}"
    return connection_uri


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA busy_timeout=60000")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class LedgerNotUpgraded(RuntimeError):
    """The ledger's schema is not the revision this code was written for."""


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@lru_cache(maxsize=1)
def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


class Ledger:
    """The pipeline's own record of every document: status, version, history, runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _engine(url)

    @property
    def location(self) -> str:
        """The URL without its password: fit for logs."""
        return self._engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, settings: ControlSettings, url: str | None = None) -> Ledger:
        """The ledger at ``url`` (default: ``default_url``); ``LedgerNotUpgraded`` unless its schema is
        at the revision this code needs. Upgrading is a deploy step (``upgrade``), never a side
        effect of a task: a schema change is made once, by whoever deploys, not by the first of many
        tasks to open the ledger."""
        ledger = cls(url or default_url(settings))
        current, head = ledger.revision(), _head_revision()
        if current != head:
            raise LedgerNotUpgraded(
                f"the ledger at {ledger.location} is at revision {current or 'none (empty)'}, this code needs "
                f"{head}: run `python -m include.control.ledger upgrade` (the local stack does on `up`)")
        return ledger

    def upgrade(self) -> str:
        """Bring the schema to the latest revision (a deploy step); the revision it is at."""
        from alembic import command

        head = _head_revision()
        if self.revision() == head:
            return head
        log.info("Upgrading the ledger at %s to revision %s", self.location, head)
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            config = _alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return head

    def revision(self) -> str | None:
        """The schema's revision; None for an empty database."""
        from alembic.runtime.migration import MigrationContext

        quiet = logging.getLogger("alembic.runtime.migration")
        level, quiet.level = quiet.level, logging.WARNING  # it announces its dialect on every check
        try:
            with self._engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        finally:
            quiet.setLevel(level)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- reading -------------------------------------------------------------

    def entries(self, *, under: str | None = None, source_uris: Iterable[str] | None = None,
                status: Status | None = None, cause: str | None = None) -> dict[str, Entry]:
        """Rows by source URI: those under a prefix, or named, or all; optionally of one status, or of
        one failure cause."""
        query = select(Document)
        if under is not None:
            query = query.where(Document.source_uri.startswith(under, autoescape=True))
        if status is not None:
            query = query.where(Document.status == status)
        if cause is not None:
            query = query.where(Document.error_cause == cause)
        wanted = None if source_uris is None else set(source_uris)
        with self._session() as session:
            rows = session.scalars(query.order_by(Document.source_uri)).all()
            return {r.source_uri: Entry.model_validate(r) for r in rows if wanted is None or r.source_uri in wanted}

    def counts(self) -> dict[str, int]:
        with self._session() as session:
            rows = session.execute(select(Document.status, func.count()).group_by(Document.status)).all()
        return {status: count for status, count in rows}

    def history(self, source_uri: str) -> list[EventEntry]:
        with self._session() as session:
            rows = session.scalars(
                select(Event).where(Event.source_uri == source_uri).order_by(Event.at, Event.id)
            ).all()
            return [EventEntry.model_validate(r) for r in rows]

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._session() as session:
            rows = session.scalars(select(Run).order_by(Run.planned_at.desc()).limit(limit)).all()
            return [{c.key: getattr(r, c.key) for c in Run.__table__.columns} for r in rows]

    def daily(self, days: int = 14) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            result = connection.execute(text("SELECT * FROM daily_metrics ORDER BY day DESC LIMIT :n"), {"n": days})
            return [dict(row._mapping) for row in result]

    # --- writing -------------------------------------------------------------

    def touch(self, run_id: str, seen: dict[str, str | None]) -> None:
        """Documents found unchanged: remember when, and the object's current version tag."""
        stamp = now()
        with self._session() as session:
            for source_uri, version in seen.items():
                session.execute(
                    update(Document).where(Document.source_uri == source_uri)
                    .values(object_version=version, last_seen=stamp)
                )

    def claim(
        self,
        dag_id: str,
        run_id: str,
        documents: list[DocumentRef],
        fingerprint: str,
        is_active: Callable[[str, str], bool],
    ) -> tuple[list[DocumentRef], dict[str, str]]:
        """Claim documents for this run: the claimed ones, and the others with the run that holds them.

        A claim is a conditional update (set only if the holder is still the one read), so of
        two runs racing for a document exactly one wins. A claim held by a run that is no
        longer running (``is_active`` says so) is taken over. A retried planning task finds
        its own claims and keeps them. A row keeps the version it records until the run
        finishes (``finish``): the new listing may turn out to hold the same bytes.
        """
        existing = self.entries(source_uris=[doc.source_uri for doc in documents])
        alive: dict[tuple[str, str], bool] = {}
        held: dict[str, str] = {}
        claimed: list[DocumentRef] = []
        stamp = now()
        with self._session() as session:
            for doc in documents:
                uri = doc.source_uri
                row = existing.get(uri)
                holder = row.claim_run_id if row else None
                if holder and holder != run_id:
                    key = (row.claim_dag_id or dag_id, holder)
                    if key not in alive:
                        alive[key] = is_active(*key)
                    if alive[key]:
                        held[uri] = holder
                        continue
                    log.warning("%s: taking over the claim of run %s, which is no longer running", uri, holder)
                values = dict(
                    status=Status.PROCESSING, pipeline_fingerprint=fingerprint, claim_dag_id=dag_id,
                    claim_run_id=run_id, claimed_at=stamp, last_seen=stamp, last_run_id=run_id, updated_at=stamp,
                )
                if row is None:
                    version = dict(doc_id=doc.doc_id, content_sha256=None, size_bytes=doc.size_bytes,
                                   object_version=doc.object_version)
                    if self._insert(session, Document(source_uri=uri, first_seen=stamp, attempts=0, **version,
                                                      **values)):
                        claimed.append(doc)
                    else:
                        held[uri] = "another run (claimed just now)"
                    continue
                new_version = (row.size_bytes, row.object_version) != (doc.size_bytes, doc.object_version)
                if new_version or row.status not in (Status.FAILED, Status.PROCESSING):
                    values["attempts"] = 0  # attempts count the tries of one version at one piece of work
                won = session.execute(
                    update(Document)
                    .where(Document.source_uri == uri, Document.claim_run_id.is_not_distinct_from(holder))
                    .values(**values)
                ).rowcount
                if won:
                    claimed.append(doc)
                else:
                    held[uri] = "another run (claimed just now)"
            for doc in claimed:
                self._event(session, doc.source_uri, doc.doc_id, run_id, "plan", "claimed",
                            {"fingerprint": fingerprint, "object_version": doc.object_version})
        return claimed, held

    @staticmethod
    def _insert(session: Session, row: Document) -> bool:
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            return False
        return True

    @staticmethod
    def _event(session: Session, source_uri: str, doc_id: str, run_id: str, stage: str, name: str,
               detail: dict[str, Any] | None = None) -> None:
        """Append an event, once per run, document, stage and kind (a retried task repeats itself)."""
        exists = session.scalar(select(Event.id).where(
            Event.run_id == run_id, Event.doc_id == doc_id, Event.stage == stage, Event.event == name))
        if exists is None:
            session.add(Event(at=now(), source_uri=source_uri, doc_id=doc_id, run_id=run_id, stage=stage,
                              event=name, detail=detail))

    def record_stage(self, run_id: str, stage: str, outcomes: Iterable[Any], submission_id: str | None) -> None:
        """A stage's outcome for each document of a batch (``DocumentOutcome``s), as it is known."""
        counted = {"extract": "pages", "chunk": "chunks", "load": "vectors"}
        with self._session() as session:
            for outcome in outcomes:
                name = "reused" if outcome.reused else str(outcome.status)
                self._event(session, outcome.source_uri, outcome.doc_id, run_id, stage, name,
                            {"submission_id": submission_id, "error": outcome.error, "metrics": outcome.metrics})
                values: dict[str, Any] = {"updated_at": now()}
                if outcome.status == "succeeded":
                    values["stage_reached"] = stage
                    if stage in counted and counted[stage] in outcome.metrics:
                        values[counted[stage]] = int(outcome.metrics[counted[stage]])
                else:
                    values.update(error=outcome.error, error_stage=stage, error_cause=outcome.cause)
                session.execute(
                    update(Document)
                    .where(Document.source_uri == outcome.source_uri, Document.claim_run_id == run_id)
                    .values(**values)
                )

    def finish(self, run_id: str, finals: Iterable[Final]) -> None:
        """Final status of each document the run claimed, and the version it now records; releases
        its claims. An unchanged document keeps the version it had, with the object's new tag."""
        stamp = now()
        with self._session() as session:
            for final in finals:
                document = final.document
                values: dict[str, Any] = dict(
                    status=final.status, claim_run_id=None, claim_dag_id=None, claimed_at=None,
                    last_run_id=run_id, updated_at=stamp, error=final.error, error_stage=final.error_stage,
                    error_cause=final.error_cause, quarantine_uri=final.quarantine_uri,
                    object_version=document.object_version,
                )
                if not final.unchanged:
                    values.update(doc_id=document.doc_id, size_bytes=document.size_bytes,
                                  attempts=Document.attempts + int(final.counts_attempt),
                                  stage_reached=final.stage_reached,
                                  **{name: final.counts.get(name) for name in ("pages", "chunks", "vectors")})
                    if document.content_sha256:  # unknown when the extract job did not get to read it
                        values["content_sha256"] = document.content_sha256
                if final.status == Status.INGESTED and not final.unchanged:
                    values["indexed_doc_id"] = document.doc_id
                # A quarantined source keeps its older version's indexed_doc_id until the prune job
                # has removed those vectors (``mark_pruned``).
                done = session.execute(
                    update(Document)
                    .where(Document.source_uri == final.source_uri, Document.claim_run_id == run_id)
                    .values(**values)
                ).rowcount
                if done:
                    self._event(session, final.source_uri, document.doc_id, run_id, "finish",
                                "unchanged" if final.unchanged else str(final.status),
                                {"error": final.error, "quarantine_uri": final.quarantine_uri})
                else:
                    log.warning("%s: not claimed by run %s any more: its outcome is not recorded",
                                final.source_uri, run_id)

    def mark_pruned(self, run_id: str, source_uri: str, vectors_removed: int, kept_doc_id: str | None = None) -> None:
        """The source has no vector left in the store: deleted, unless it is quarantined (which says more).
        Not when another run holds its claim, or its indexed version is the one the prune kept (a newer
        run has ingested it since): that run's record stands."""
        with self._session() as session:
            row = session.scalar(select(Document).where(Document.source_uri == source_uri))
            if row is None:
                return
            if kept_doc_id and row.indexed_doc_id == kept_doc_id:
                return  # its current version is the one indexed: only older versions' traces went
            if row.claim_run_id and row.claim_run_id != run_id:
                log.warning("%s: claimed by run %s since run %s planned its prune: the prune is not recorded",
                            source_uri, row.claim_run_id, run_id)
                return
            quarantined = row.status == Status.QUARANTINED
            if not quarantined:
                row.status = Status.DELETED
            row.indexed_doc_id, row.vectors = None, 0
            row.last_run_id, row.updated_at = run_id, now()
            self._event(session, source_uri, row.doc_id, run_id, "prune", "pruned" if quarantined else "deleted",
                        {"vectors_removed": vectors_removed})

    def unredacted_due(self, ingested_before: datetime) -> list[str]:
        """Indexed versions ingested before then whose unredacted artifacts have not been expired since."""
        ingested = (select(Event.doc_id, func.max(Event.at).label("at"))
                    .where(Event.event == str(Status.INGESTED)).group_by(Event.doc_id).subquery())
        expired = (select(Event.doc_id, func.max(Event.at).label("at"))
                   .where(Event.event == EXPIRED).group_by(Event.doc_id).subquery())
        query = (select(Document.indexed_doc_id)
                 .join(ingested, ingested.c.doc_id == Document.indexed_doc_id)
                 .outerjoin(expired, expired.c.doc_id == Document.indexed_doc_id)
                 .where(Document.status == Status.INGESTED, ingested.c.at < ingested_before,
                        (expired.c.at.is_(None)) | (expired.c.at < ingested.c.at))
                 .order_by(Document.indexed_doc_id))
        with self._session() as session:
            return list(session.scalars(query).all())

    def mark_expired(self, run_id: str, expired: dict[str, int]) -> None:
        """A prune job removed these versions' unredacted artifacts (files per version)."""
        with self._session() as session:
            for doc_id, files in expired.items():
                source_uri = session.scalar(select(Document.source_uri).where(Document.indexed_doc_id == doc_id))
                if source_uri is not None:
                    self._event(session, source_uri, doc_id, run_id, "retention", EXPIRED, {"files_removed": files})

    def hold(self, dag_id: str, run_id: str, source_uris: list[str],
             is_active: Callable[[str, str], bool]) -> dict[str, str]:
        """Claim rows as they are (an erasure's), with the same compare-and-set as ``claim``: the sources
        another running run holds, with that run (nothing of theirs is held)."""
        existing = self.entries(source_uris=source_uris)
        held: dict[str, str] = {}
        with self._session() as session:
            for uri in source_uris:
                holder = existing[uri].claim_run_id
                if holder and holder != run_id and is_active(existing[uri].claim_dag_id or dag_id, holder):
                    held[uri] = holder
                    continue
                won = session.execute(
                    update(Document)
                    .where(Document.source_uri == uri, Document.claim_run_id.is_not_distinct_from(holder))
                    .values(claim_dag_id=dag_id, claim_run_id=run_id, claimed_at=now())
                ).rowcount
                if not won:
                    held[uri] = "another run (claimed just now)"
        return held

    def traces(self, source_uris: list[str]) -> tuple[list[tuple[str, str]], set[str]]:
        """Where else the sources are named: the runs (DAG, run) whose history names them, and the other
        names they had (every version's document id, the quarantine's URI)."""
        with self._session() as session:
            events = session.execute(select(Event.run_id, Event.doc_id).where(Event.source_uri.in_(source_uris))).all()
            rows = session.scalars(select(Document).where(Document.source_uri.in_(source_uris))).all()
            names = {doc_id for _run, doc_id in events} | {
                name for row in rows for name in (row.doc_id, row.indexed_doc_id, row.quarantine_uri) if name}
            run_ids = {run_id for run_id, _doc in events} | {row.last_run_id for row in rows if row.last_run_id}
            runs = session.execute(select(Run.dag_id, Run.run_id).where(Run.run_id.in_(run_ids))).all()
        return sorted((dag_id, run_id) for dag_id, run_id in runs), names

    def forget(self, source_uris: list[str]) -> tuple[int, int]:
        """Remove the sources' rows and history, in one transaction: the rows and events removed."""
        with self._session() as session:
            removed_events = session.execute(delete(Event).where(Event.source_uri.in_(source_uris))).rowcount
            removed_rows = session.execute(delete(Document).where(Document.source_uri.in_(source_uris))).rowcount
        return removed_rows, removed_events

    def start_run(self, dag_id: str, run_id: str, counts: dict[str, int]) -> None:
        with self._session() as session:
            run = session.get(Run, (dag_id, run_id)) or Run(run_id=run_id, dag_id=dag_id, planned_at=now())
            for name, value in counts.items():
                setattr(run, name, value)
            session.add(run)

    def finish_run(self, dag_id: str, run_id: str, totals: dict[str, Any]) -> None:
        with self._session() as session:
            run = session.get(Run, (dag_id, run_id))
            if run is None:
                return
            for name, value in totals.items():
                setattr(run, name, value)
            run.finished_at = now()
