"""The ledger on a real PostgreSQL server: the counterpart of ``test_ledger.py``, which runs on SQLite.

The module starts a throwaway server of its own (``initdb`` + ``pg_ctl``, files under pytest's
tmp dir) and gives each test a fresh database on it; it is skipped where PostgreSQL's server
programs are not installed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import UTC, date
from pathlib import Path

import pytest
from sqlalchemy import inspect

from include.control.ledger import Ledger
from include.control.ledger.store import default_url, sqlalchemy_url
from include.control.settings import ControlSettings
from tests.postgres import PostgresServer, PostgresUnavailable, postgres_server
from tests.unit.control.test_ledger import (
    HEAD_REVISION,
    INBOX,
    _candidate,
    assert_one_history_for_a_retried_stage,
    assert_upgrade_keeps_rows,
)

RACE_TIMEOUT = 60


@pytest.fixture(scope="module")
def postgres(tmp_path_factory) -> Iterator[PostgresServer]:
    """A PostgreSQL server of this module's own, stopped at the end even when tests fail."""
    try:
        # A zone 14 hours from UTC: the daily_metrics view must still give a run's UTC day.
        with postgres_server(tmp_path_factory.mktemp("postgres"), settings=("TimeZone=Pacific/Kiritimati",)) as server:
            yield server
    except PostgresUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture
def database_uri(postgres) -> str:
    """A fresh database for one test, as an Airflow connection URI."""
    return postgres.uri(postgres.create_database())


def _settings(tmp_path) -> ControlSettings:
    return ControlSettings(work_dir=tmp_path)


def _open(tmp_path, url: str) -> Ledger:
    Ledger(url).upgrade()  # the deploy step
    return Ledger.open(_settings(tmp_path), url)


def test_the_schema_is_upgraded_once_and_upgrading_again_changes_nothing(tmp_path, database_uri):
    url = sqlalchemy_url(database_uri)
    assert url.startswith("postgresql+pg8000://")
    ledger = _open(tmp_path, url)
    assert ledger.revision() == HEAD_REVISION
    inspector = inspect(ledger._engine)
    assert {"documents", "document_events", "runs", "alembic_version"} <= set(inspector.get_table_names())
    assert "daily_metrics" in inspector.get_view_names()
    assert _open(tmp_path, url).revision() == HEAD_REVISION and ledger.counts() == {}


def test_the_upgrades_keep_every_row_and_take_a_3_gib_file(database_uri):
    assert_upgrade_keeps_rows(sqlalchemy_url(database_uri))


def _migrate_together(work_dir: Path, url: str, barrier, queue) -> None:
    barrier.wait(timeout=RACE_TIMEOUT)  # both processes are up: start at the same moment
    queue.put(Ledger(url).upgrade())


def _race(target, args_per_racer: list[tuple]) -> list:
    """Run ``target`` in one spawned process per argument tuple, released together; what each put."""
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(len(args_per_racer))
    racers = [context.Process(target=target, args=(*args, barrier, queue)) for args in args_per_racer]
    for racer in racers:
        racer.start()
    try:
        results = [queue.get(timeout=RACE_TIMEOUT) for _ in racers]
    finally:
        for racer in racers:
            racer.join(timeout=RACE_TIMEOUT)
    assert [racer.exitcode for racer in racers] == [0] * len(racers)
    return results


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(tmp_path, database_uri):
    url = sqlalchemy_url(database_uri)
    assert _race(_migrate_together, [(tmp_path, url), (tmp_path, url)]) == [HEAD_REVISION, HEAD_REVISION]
    assert Ledger(url).revision() == HEAD_REVISION


def _claim_together(url: str, run_id: str, names: list[str], barrier, queue) -> None:
    ledger = Ledger(url)
    candidates = [_candidate(name) for name in names]
    barrier.wait(timeout=RACE_TIMEOUT)
    claimed, _ = ledger.claim("document_ingest", run_id, candidates, "fp", is_active=lambda *_: True)
    queue.put((run_id, sorted(c.source_uri for c in claimed)))


def test_two_processes_racing_for_the_same_documents_never_both_get_one(tmp_path, database_uri):
    url = sqlalchemy_url(database_uri)
    ledger = _open(tmp_path, url)
    names = [f"doc-{n:03d}.pdf" for n in range(60)]
    results = dict(_race(_claim_together, [(url, f"run-{n}", names) for n in range(2)]))
    first, second = results.values()
    assert not set(first) & set(second)
    assert sorted(first + second) == [f"{INBOX}{name}" for name in names]
    assert {entry.claim_run_id for entry in ledger.entries().values()} <= set(results)


def test_a_document_claimed_processed_and_finished_has_its_history_and_the_day_its_run(tmp_path, database_uri):
    ledger = _open(tmp_path, sqlalchemy_url(database_uri))
    assert_one_history_for_a_retried_stage(ledger)

    ledger.start_run("dag", "run-1", {"new": 1})
    ledger.finish_run("dag", "run-1", {"ingested": 1, "pages": 3, "seconds": {"extract": 1.5}})
    [run] = ledger.runs()
    [day] = ledger.daily()
    assert isinstance(day["day"], date) and day["day"] == run["finished_at"].astimezone(UTC).date()
    assert (day["runs"], day["new"], day["ingested"], day["pages"]) == (1, 1, 1, 3)


def test_the_airflow_connection_pipeline_ledger_is_the_default_ledger(tmp_path, database_uri, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PIPELINE_LEDGER", database_uri)
    settings = _settings(tmp_path)
    assert settings.ledger_url is None  # else the setting would win over the connection
    assert default_url(settings) == sqlalchemy_url(database_uri)
    Ledger(default_url(settings)).upgrade()
    ledger = Ledger.open(settings)
    assert ledger.location == sqlalchemy_url(database_uri)
    assert ledger.revision() == HEAD_REVISION and ledger.counts() == {}
